"""Peer methods in the trainer: 'recu', 'bop', 'lars' and their combinations.

End-to-end runs use synthetic 16x16 images, batch 8 and a cResNet20 cut to
one block per stage (model_options stage_sizes=(1, 1, 1)) to keep compiling
short. The optimizers are also checked numerically on small hand-made trees.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from ovsw_jax import data  # pylint: disable=wrong-import-position
from ovsw_jax import layers  # pylint: disable=wrong-import-position
from ovsw_jax import recu  # pylint: disable=wrong-import-position
from ovsw_jax.training import experiment as experiment_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import loop  # pylint: disable=wrong-import-position
from ovsw_jax.training import mesh as mesh_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import methods  # pylint: disable=wrong-import-position
from ovsw_jax.training import metrics_io  # pylint: disable=wrong-import-position
from ovsw_jax.training import state as state_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import steps as steps_lib  # pylint: disable=wrong-import-position
from ovsw_jax import transforms  # pylint: disable=wrong-import-position

SMALL = {
    "model": "cresnet20_1w1a",
    "model_options": {"stage_sizes": (1, 1, 1)},
    "dataset": "synthetic",
    "dataset_options": {"image_shape": (16, 16, 3), "num_train": 16,
                        "num_eval": 8},
    "batch_size": 8,
    "num_epochs": 2,
    "warmup_epochs": 1,
    "log_every_steps": 1,
    "flip_stats_every_steps": 0,
    "eval_every_epochs": 0,
    "progress_bar": False,
    "prefetch": 0,
    "async_checkpointing": False,
}


def small_config(**overrides):
  config = default.get_config()
  config.update({**SMALL, **overrides})
  return config


def leaves_named(tree, name):
  """{path: leaf} of the leaves whose last key is ``name``."""
  return {transforms.path_name(p): x
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if getattr(p[-1], "key", None) == name}


def float32(x):
  return float(np.float32(x))


# ---------------------------------------------------------------------------
# Registry and config
# ---------------------------------------------------------------------------


def test_parts_of_the_new_methods():
  parts = {m: methods.method_parts(m) for m in (
      "recu", "bop", "lars", "recu+ovsw", "recu+ags", "recu+sad",
      "lars+sad")}
  assert parts["recu+ovsw"] == ["recu", "ags", "sad"]
  assert parts["lars+sad"] == ["lars", "sad"]
  assert parts["bop"] == ["bop"]
  with pytest.raises(ValueError, match="several optimizers"):
    methods.method_parts("bop+sgd")
  with pytest.raises(ValueError, match="applies 'recu' twice"):
    methods.method_parts("recu+recu")


@pytest.mark.parametrize("method", ["recu+ags", "recu+sad", "recu+ovsw"])
def test_recu_changes_the_model_and_nothing_else(method):
  config = small_config(method=method, recu_tau_min=0.9)
  model = methods.create_model(config, 10)
  assert model.conv.func is recu.ReCUConv
  assert model.conv.keywords == {"tau_init": 0.9}
  without = small_config(method=method.replace("recu+", ""))
  assert methods.create_model(without, 10).conv is layers.BinaryConv
  # The optimizer of 'recu+X' is the one of 'X'.
  params = {"c": {layers.LATENT_KERNEL: jnp.arange(-6.0, 6.0).reshape(3, 4)},
            "bn": {"scale": jnp.ones((4,))}}
  grads = jax.tree.map(lambda x: 1e-3 * jnp.cos(x), params)
  lr_fn = lambda _: 0.1
  got = methods.create_optimizer(config, lr_fn)
  want = methods.create_optimizer(without, lr_fn)
  (u_got, s_got), (u_want, s_want) = (
      got.update(grads, got.init(params), params),
      want.update(grads, want.init(params), params))
  assert jax.tree.structure(s_got) == jax.tree.structure(s_want)
  for a, b in zip(jax.tree.leaves(u_got), jax.tree.leaves(u_want)):
    np.testing.assert_array_equal(a, b)
  # A conv set in model_options too is refused, naming the option.
  config.model_options = {"conv": layers.BinaryConv}
  with pytest.raises(ValueError, match=r"part 'recu' sets the model option"
                     r"\(s\) \['conv'\]"):
    methods.create_model(config, 10)


@pytest.mark.parametrize("key,value,expected", [
    ("bop_gamma", 0.0, r"in \(0, 1\]"),
    ("bop_threshold", -1e-8, ">= 0"),
    ("lars_trust_coefficient", 0.0, "> 0"),
    ("recu_tau_min", 0.5, r"in \(0.5, 1\]"),
    ("recu_tau_max", 0.8, r"in \[recu_tau_min=0.85, 1\]"),
])
def test_bad_values_of_the_new_fields(key, value, expected):
  config = small_config(**{key: value})
  with pytest.raises(ValueError, match=rf"config.{key}={value!r}: expected "
                     rf"{expected}"):
    experiment_lib.validate_config(config)


# ---------------------------------------------------------------------------
# The optimizers, numerically, on small trees
# ---------------------------------------------------------------------------


def _tree(rng):
  return {
      "conv": {layers.LATENT_KERNEL: jnp.asarray(
          rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
      "dense": {layers.LATENT_KERNEL: jnp.asarray(
          rng.normal(size=(5, 3)), jnp.float32)},
      "bn": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, size=(4,)),
                                  jnp.float32)},
  }


def test_lars_matches_the_trust_ratio_formula():
  rng = np.random.default_rng(0)
  params = _tree(rng)
  grads = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 1e-3, jnp.float32),
      params)
  lr, wd, tc, mom = 0.1, 5e-4, 0.04, 0.9
  config = small_config(method="lars", weight_decay=wd,
                        lars_trust_coefficient=tc, momentum=mom)
  tx = methods.create_optimizer(config, lambda _: lr)
  state = tx.init(params)
  trace = jax.tree.map(np.zeros_like, params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    for name in ("conv", "dense", "bn"):
      key = "scale" if name == "bn" else layers.LATENT_KERNEL
      w = np.asarray(params[name][key], np.float64)
      g = np.asarray(grads[name][key], np.float64)
      if name != "bn":  # layer-wise: ||g'|| = tc * ||w||
        g = tc * np.linalg.norm(w) / np.linalg.norm(g) * g
      trace[name][key] = mom * trace[name][key] + g + wd * w
      np.testing.assert_allclose(updates[name][key], -lr * trace[name][key],
                                 rtol=1e-5, atol=1e-9)
    params = optax.apply_updates(params, updates)


def test_bop_method_flips_binary_kernels_and_sgd_moves_the_rest():
  rng = np.random.default_rng(1)
  params = _tree(rng)
  grads = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  lr, wd, threshold, gamma = 0.1, 5e-4, 5e-2, 0.1
  config = small_config(method="bop", weight_decay=wd,
                        bop_threshold=threshold, bop_gamma=gamma)
  tx = methods.create_optimizer(config, lambda _: lr)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for name in ("conv", "dense"):
    w = np.asarray(params[name][layers.LATENT_KERNEL])
    m = gamma * np.asarray(grads[name][layers.LATENT_KERNEL])
    flip = (np.abs(m) > threshold) & ((m > 0) == (w >= 0))
    assert 0 < flip.sum() < flip.size
    np.testing.assert_array_equal(new[name][layers.LATENT_KERNEL],
                                  np.where(flip, -w, w))
  w, g = params["bn"]["scale"], grads["bn"]["scale"]
  np.testing.assert_allclose(new["bn"]["scale"], w - lr * (g + wd * w),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# End to end through the training loop
# ---------------------------------------------------------------------------


def _initial_state(exp, config, mesh):
  """A TrainState of the experiment's structure with random values.

  `state_lib.create_train_state` compiles the model's init (many seconds on
  a loaded CPU); the method tests need only some starting point, so this
  fills `state_lib.abstract_train_state`'s structure from NumPy instead
  (`test_recu_ovsw_end_to_end_checkpoints_tau` runs the real one).
  """
  abstract = state_lib.abstract_train_state(
      exp.model, exp.tx, exp.info.image_shape, config.seed, mesh,
      exp.model_state_fn)
  rng = np.random.default_rng(config.seed)

  def fill(path, s):
    name = getattr(path[-1], "key", None)
    if name in ("scale", "var"):
      x = np.ones(s.shape)
    elif name in ("bias", "mean"):
      x = np.zeros(s.shape)
    elif name == "alpha":
      x = rng.uniform(size=s.shape)
    elif name == recu.TAU:
      x = np.full(s.shape, config.recu_tau_min)
    else:  # kernels: fan-in scaled normal
      x = rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
    return jnp.asarray(x.astype(s.dtype))

  variables = jax.tree_util.tree_map_with_path(
      fill, (abstract.params, abstract.batch_stats, abstract.model_state))
  params, batch_stats, model_state = variables
  state = abstract.replace(
      params=params, batch_stats=batch_stats, model_state=model_state,
      opt_state=exp.tx.init(params), step=jnp.zeros([], jnp.int32),
      rng=jax.random.PRNGKey(config.seed))
  # All replicated, as the step returns it (else step 2 would recompile).
  return jax.device_put(state, mesh_lib.replicated(mesh))


def _train(method, steps=3, **overrides):
  """``steps`` jitted train steps of ``method``; the states and metrics."""
  config = small_config(method=method, **overrides)
  exp = experiment_lib.create_experiment(config)
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  state = _initial_state(exp, config, mesh)
  initial = jax.device_get(state)
  step = steps_lib.jit_train_step(exp.learning_rate_fn, mesh)
  batches = data.create_train_iterator(
      config.dataset, None, config.batch_size, config.seed, prefetch=0,
      **config.dataset_options)
  states, metrics = [initial], []
  for _ in range(steps):
    state, m = step(state, mesh_lib.shard_batch(next(batches), mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return exp, states, metrics


def test_bop_trains_by_sign_flips_only():
  _, states, metrics = _train("bop")
  assert all(np.isfinite(m["loss"]) for m in metrics)
  flips = 0
  for before, after in zip(states, states[1:]):
    old = leaves_named(before.params, layers.LATENT_KERNEL)
    new = leaves_named(after.params, layers.LATENT_KERNEL)
    assert len(old) == 6
    for k in old:
      np.testing.assert_array_equal(np.abs(new[k]), np.abs(old[k]))
      flips += int(np.sum(np.sign(new[k]) != np.sign(old[k])))
  assert flips > 0
  # The float params move by SGD.
  assert not np.array_equal(states[0].params["fc"]["kernel"],
                            states[-1].params["fc"]["kernel"])


def test_lars_sad_first_step_has_the_trust_ratio_norm():
  wd, tc, lam, lr = 5e-4, 0.04, 9e-4, 0.1
  _, states, metrics = _train("lars+sad", weight_decay=wd, dampen_weight=lam,
                              lars_trust_coefficient=tc, learning_rate=lr)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  # Step 1 (warmup lr = lr, momentum buffer 0, every weight silent):
  # w1 - w0 = -lr * (tc ||w0|| / ||g|| * g + (lam + wd) * w0), so
  # ||(w1 - w0) / lr + (lam + wd) w0|| = tc * ||w0||, whatever g is.
  old = leaves_named(states[0].params, layers.LATENT_KERNEL)
  new = leaves_named(states[1].params, layers.LATENT_KERNEL)
  for k in old:
    w0 = np.asarray(old[k], np.float64)
    scaled = (np.asarray(new[k], np.float64) - w0) / lr + (lam + wd) * w0
    np.testing.assert_allclose(np.linalg.norm(scaled),
                               tc * np.linalg.norm(w0), rtol=1e-3)
  assert metrics[0]["silent_fraction"] == 1.0


def test_recu_tau_follows_the_epochs():
  # 16 images / batch 8: 2 steps per epoch, 2 epochs.
  exp, states, metrics = _train("recu")
  assert exp.steps_per_epoch == 2
  assert all(np.isfinite(m["loss"]) for m in metrics)
  want = [recu.recu_tau(0, 2)] * 2 + [recu.recu_tau(1, 2)]
  for state, m, tau in zip(states[1:], metrics, want):
    taus = jax.tree.leaves(state.model_state[recu.TAU_COLLECTION])
    assert len(taus) == 6
    np.testing.assert_allclose(taus, float32(tau), rtol=1e-6)
    np.testing.assert_allclose(m["recu_tau"], float32(tau), rtol=1e-6)
  alphas = leaves_named(states[0].params, "alpha")
  assert len(alphas) == 6
  for k, v in leaves_named(states[-1].params, "alpha").items():
    assert not np.array_equal(v, alphas[k])
  assert "silent_fraction" not in metrics[0]
  assert "ags_ratio" not in metrics[0]


def test_recu_ovsw_end_to_end_checkpoints_tau(tmp_path):
  # 8 images / batch 8: one step per epoch; a checkpoint after each.
  config = small_config(
      method="recu+ovsw", num_epochs=2, checkpoint_every_steps=1,
      dataset_options={"image_shape": (16, 16, 3), "num_train": 8,
                       "num_eval": 8})
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2 and math.isfinite(summary["train_loss"])
  records = [r for r in metrics_io.read_metrics(str(tmp_path))
             if "train_loss" in r]
  assert [r["step"] for r in records] == [1, 2]
  for r, epoch in zip(records, (0, 1)):
    assert r["recu_tau"] == pytest.approx(recu.recu_tau(epoch, 2), rel=1e-6)
    assert 0 < r["silent_fraction"] <= 1 and r["ags_ratio"] > 0
  for step, epoch in ((1, 0), (2, 1)):
    state, got = loop.load_checkpoint(config, str(tmp_path), step)
    assert got == step
    taus = jax.tree.leaves(state.model_state[recu.TAU_COLLECTION])
    np.testing.assert_allclose(taus, float32(recu.recu_tau(epoch, 2)),
                               rtol=1e-6)
  # Both ReCU's params and OvSW's optimizer state are there.
  assert len(leaves_named(state.params, "alpha")) == 6
  silent = transforms.sad_diagnostics(state.opt_state)
  assert len([k for k in silent if k.endswith(layers.LATENT_KERNEL)]) == 6
  ratios = transforms.ags_diagnostics(state.opt_state)
  assert len([k for k in ratios if k.endswith(layers.LATENT_KERNEL)]) == 6
