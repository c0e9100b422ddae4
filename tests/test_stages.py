"""Two-stage training and distillation: the loss, init_from, the teacher.

A tiny cResNet20 (one block per stage, 8x8 synthetic images) runs ReActNet's
two stages once per module: stage 1 with float weights
(``binarize_weights=False``), stage 2 binary, initialised from stage 1 and
distilling, as ReActNet, from a real-valued ResNet (the recipe
configs/cifar10_float_resnet18.py cut to width 4 and two one-block stages)
trained first with method 'vanilla'.
"""

import glob
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_float_resnet18
from ovsw_jax import layers
from ovsw_jax import masks
from ovsw_jax import models
from ovsw_jax.data import device_normalize
from ovsw_jax import data
from ovsw_jax.training import distill
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import loop
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import warm_start
from tests.test_methods import SMALL
from tests.test_methods import small_config

_DATA = {"image_shape": (8, 8, 3), "num_train": 8, "num_eval": 8}


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_distribution_loss_is_reactnets_kd_loss_in_float64():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 7)) * 2, rng.normal(size=(5, 7)) * 2
  with jax.enable_x64(True):
    loss, grad = jax.value_and_grad(distill.distribution_loss)(
        jnp.asarray(s), jnp.asarray(t))
    t_grad = jax.grad(distill.distribution_loss, argnums=1)(
        jnp.asarray(s), jnp.asarray(t))
  log_p, log_q = _np_log_softmax(t), _np_log_softmax(s)
  p = np.exp(log_p)
  kl = np.mean(np.sum(p * (log_p - log_q), -1))
  entropy = np.mean(-np.sum(p * log_p, -1))
  # KD_loss.py's value: KL(p_t || q_s) plus the teacher's entropy.
  np.testing.assert_allclose(loss, kl + entropy, rtol=1e-12)
  np.testing.assert_allclose(grad, (np.exp(log_q) - p) / 5, rtol=1e-10,
                             atol=1e-14)
  np.testing.assert_array_equal(t_grad, 0.0)  # The teacher is frozen.


def test_binarize_weights_false_convolves_with_the_latent_kernel():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 5, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  conv = layers.BinaryConv(4, binarize_weights=False)
  y = conv.apply({"params": {"latent_kernel": w}}, x)
  want = jax.lax.conv_general_dilated(
      jnp.where(x >= 0, 1.0, -1.0), w, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  assert not conv.exact_pm1_operands  # No bfloat16 narrowing of floats.


def _stage_configs(root):
  common = dict(method="ovsw", dataset_options=_DATA, num_epochs=2,
                checkpoint_every_steps=1, lr_schedule="linear",
                warmup_epochs=0)
  stage1 = small_config(model_options={"stage_sizes": (1, 1, 1),
                                       "binarize_weights": False},
                        weight_decay=1e-5, **common)
  stage2 = small_config(init_from=str(root / "stage1"),
                        teacher_workdir=str(root / "teacher"),
                        weight_decay=0.0, **common)
  return stage1, stage2


def _teacher_config():
  """The real-valued recipe, cut to the students' tiny data and length."""
  config = cifar10_float_resnet18.get_config()
  config.update({k: v for k, v in SMALL.items()
                 if k not in ("model", "model_options")})
  config.update(dataset_options=_DATA, num_epochs=2, warmup_epochs=0)
  config.model_options.update(width=4, stage_sizes=(1, 1))
  return config


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  root = tmp_path_factory.mktemp("stages")
  stage1, stage2 = _stage_configs(root)
  loop.train_and_evaluate(_teacher_config(), str(root / "teacher"))
  loop.train_and_evaluate(stage1, str(root / "stage1"))
  loop.train_and_evaluate(stage2, str(root / "stage2"))
  return root, stage1, stage2


def _items(state):
  return jax.tree_util.tree_flatten_with_path(
      jax.device_get(state_lib.checkpoint_items(state)))[0]


@pytest.fixture(scope="module")
def stage2_start(stages):
  """Stage 2's experiment and its state at step 0, as the loop builds it."""
  _, _, stage2 = stages
  mesh = mesh_lib.create_mesh()
  exp = experiment_lib.create_experiment(stage2)
  fresh = state_lib.create_train_state(exp.model, exp.tx,
                                       exp.info.image_shape, stage2.seed, mesh)
  return exp, warm_start.initialise_from(fresh, stage2.init_from, exp.tx,
                                         mesh)


def test_stage2_starts_from_stage1_exactly_with_a_fresh_optimizer(
    stages, stage2_start):
  root, stage1, _ = stages
  exp, state = stage2_start
  final1, step1 = loop.load_checkpoint(stage1, str(root / "stage1"))
  assert step1 == 2
  for name in ("params", "batch_stats"):
    got, want = (jax.tree_util.tree_flatten_with_path(jax.device_get(
        getattr(s, name)))[0] for s in (state, final1))
    assert len(got) == len(want) > 0
    for (path, x), (_, y) in zip(got, want):
      np.testing.assert_array_equal(x, y, err_msg=str(path))
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state.opt_state),
               jax.device_get(exp.tx.init(state.params)))
  assert int(state.step) == 0


def test_the_teachers_logits_enter_the_loss(stages, stage2_start):
  """Stage 2's logged loss at step 1 is the NumPy distribution loss of its
  student's logits against the real-valued teacher's."""
  root, _, stage2 = stages
  exp, state = stage2_start
  mesh = mesh_lib.create_mesh()
  teacher = distill.load_teacher(stage2, exp.info.num_classes, mesh)
  assert teacher is not None and teacher.weight == 1.0
  # The teacher's config.json gives the stage sizes back as a list.
  assert teacher.apply_fn.__self__ == models.get_model(
      "resnet18_cifar", 10, width=4, stage_sizes=[1, 1])
  assert not any(jax.tree.leaves(masks.binary_kernel_mask(
      teacher.variables["params"])))
  batch = next(data.create_train_iterator(
      stage2.dataset, None, stage2.batch_size, stage2.seed, prefetch=0,
      **_DATA))
  images = device_normalize.normalizer(exp.info)(jnp.asarray(batch["image"]))
  student, _ = exp.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images,
      train=True, mutable=["batch_stats"])
  teacher_logits = teacher.apply_fn(teacher.variables, images, train=False)
  s, t = (np.asarray(v, np.float64) for v in (student, teacher_logits))
  p = np.exp(_np_log_softmax(t))
  kd = -np.mean(np.sum(p * _np_log_softmax(s), -1))
  ce = -np.mean(_np_log_softmax(s)[np.arange(len(s)), batch["label"]])
  first = [r for r in metrics_io.read_metrics(str(root / "stage2"))
           if r["step"] == 1 and "train_loss" in r][0]
  np.testing.assert_allclose(first["train_loss"], kd, rtol=1e-4)
  np.testing.assert_allclose(first["distill_loss"], kd, rtol=1e-4)
  assert abs(kd - ce) > 1e-2  # A loss of the labels alone would fail.


def test_kill_and_resume_is_exact_within_stage2(stages):
  """Stage 2 resumed from step 1 (its teacher attached again, init_from
  ignored) ends equal to the straight run to the bit."""
  root, _, stage2 = stages
  straight, resumed = root / "stage2", root / "stage2_resumed"
  shutil.copytree(straight, resumed)
  for path in glob.glob(str(resumed / "**" / "2"), recursive=True):
    shutil.rmtree(path)
  loop.train_and_evaluate(stage2, str(resumed))
  a, _ = loop.load_checkpoint(stage2, str(straight), 2)
  b, _ = loop.load_checkpoint(stage2, str(resumed), 2)
  for (path, x), (_, y) in zip(_items(a), _items(b)):
    np.testing.assert_array_equal(x, y, err_msg=str(path))


@pytest.mark.parametrize("recipe,model,batch,teacher", [
    ("imagenet_reactnet_a", "reactnet_a", 256, "resnet34"),
    ("imagenet_react_resnet18", "react_resnet18", 512, "resnet34"),
    ("cifar10_react_resnet18", "react_resnet18_cifar", 256, None),
])
def test_react_recipes_have_two_stages(recipe, model, batch, teacher):
  module = __import__(f"configs.{recipe}", fromlist=["get_config"])
  stage1, stage2 = module.get_config("stage1"), module.get_config("stage2")
  experiment_lib.validate_config(stage1)
  # ReActNet distils both stages from torchvision's float ResNet-34.
  for stage in (stage1, stage2):
    assert stage.teacher_model == teacher
    assert stage.teacher_file == (teacher and "resnet34_torchvision.npz")
    assert teacher is None or not models.is_binary(stage.teacher_model)
  assert (stage1.model, stage1.batch_size, stage1.method) == (
      model, batch, "ovsw+adam")
  assert stage1.model_options.binarize_weights is False
  assert (stage1.weight_decay, stage2.weight_decay) == (1e-5, 0.0)
  assert "binarize_weights" not in stage2.model_options
  assert stage1.lr_schedule == stage2.lr_schedule == "linear"
  with pytest.raises(ValueError, match="--config.init_from="):
    experiment_lib.validate_config(stage2)
  stage2.init_from = "/runs/stage1"
  experiment_lib.validate_config(stage2)
  with pytest.raises(ValueError, match="stage 'stage3'"):
    module.get_config("stage3")


def test_adam_part_is_torch_adam_with_l2_decay():
  """'adam': g + wd * w (2-D params only), then Adam's bias-corrected
  moments; checked over three steps against the NumPy formulas."""
  from ovsw_jax.training import methods  # pylint: disable=g-import-not-at-top
  config = small_config(method="adam", weight_decay=0.1,
                        weight_decay_on_1d=False)
  tx = methods.create_optimizer(config, lambda step: 0.01)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
  state = tx.init(jax.tree.map(jnp.asarray, params))
  m = {k: 0.0 for k in params}
  v = {k: 0.0 for k in params}
  for t in range(1, 4):
    grads = {k: rng.normal(size=p.shape) for k, p in params.items()}
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state,
                               jax.tree.map(jnp.asarray, params))
    for k in params:
      g = grads[k] + (0.1 * params[k] if k == "w" else 0.0)
      m[k] = 0.9 * m[k] + 0.1 * g
      v[k] = 0.999 * v[k] + 0.001 * g * g
      step = -0.01 * (m[k] / (1 - 0.9**t)) / (
          np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
      np.testing.assert_allclose(updates[k], step, rtol=2e-5, atol=1e-8)
      params[k] = params[k] + np.asarray(updates[k], np.float64)


def test_bad_stage_values_are_named():
  for overrides, field in (({"distill_weight": 2.0}, "distill_weight"),
                           ({"teacher_checkpoint": "newest"},
                            "teacher_checkpoint"),
                           ({"teacher_file": "t.pth"}, "teacher_model"),
                           ({"teacher_file": "t.pth", "teacher_model": "x",
                             "teacher_workdir": "/w"}, "teacher_file")):
    with pytest.raises(ValueError, match=f"config.{field}="):
      experiment_lib.validate_config(small_config(**overrides))
  experiment_lib.validate_config(small_config(teacher_checkpoint="1000"))
  with pytest.raises(ValueError, match=r"\['a'\]\['k'\]: \(3,\) here, "
                     r"\(4,\) in src"):
    warm_start.check_same_tree("params", {"a": {"k": np.zeros(3)}},
                               {"a": {"k": np.zeros(4)}}, "src")
