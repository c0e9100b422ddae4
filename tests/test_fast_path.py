"""The CPU fast path (`fast_path_lib.CPU_COMPILER_OPTIONS`) against XLA's defaults.

The fast path only changes how XLA:CPU compiles the same step (which library
runs the convolutions and reductions), so both must train alike: the binary
convolutions' forward is exact either way (+-1 operands), and what differs is
the summation order of float sums (BatchNorm statistics, gradients).
"""

import types

import jax
import numpy as np
import pytest

from configs import default
from ovsw_jax import data
from ovsw_jax.training import cpu_fast_path as fast_path_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import experiment as experiment_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import mesh as mesh_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import methods  # pylint: disable=wrong-import-position
from ovsw_jax.training import state as state_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import steps as steps_lib  # pylint: disable=wrong-import-position

# Numerics that matter on a GPU/TPU (`-m accelerator`): there both paths
# compile alike (the fast path is CPU-only), and must still train alike.
pytestmark = pytest.mark.accelerator

SMALL = {
    "model": "cresnet20_1w1a",
    "model_options": {"stage_sizes": (1, 1, 1)},
    "dataset": "synthetic",
    "dataset_options": {"image_shape": (16, 16, 3), "num_train": 64,
                        "num_eval": 16},
    "batch_size": 16,
    "learning_rate": 0.01,
    "progress_bar": False,
}


def _config(**overrides):
  config = default.get_config()
  config.update({**SMALL, **overrides})
  return config


def _fake_mesh(platform):
  device = types.SimpleNamespace(platform=platform)
  return types.SimpleNamespace(devices=np.array([device], dtype=object))


def _cpu_mesh():
  # The module also runs on a GPU/TPU (-m accelerator), where the default
  # mesh is not a CPU one; the CPU path is checked on the CPU devices.
  return mesh_lib.create_mesh(jax.devices("cpu"))


def test_options_are_chosen_per_backend():
  mesh = _cpu_mesh()
  assert fast_path_lib.compiler_options(mesh) == fast_path_lib.CPU_COMPILER_OPTIONS
  # A copy: callers cannot change the module's options by accident.
  assert fast_path_lib.compiler_options(mesh) is not fast_path_lib.CPU_COMPILER_OPTIONS
  assert fast_path_lib.compiler_options(mesh, cpu_fast_path=False) is None
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert fast_path_lib.compiler_options(_fake_mesh(platform)) is None


def test_rejected_options_fall_back_to_defaults(monkeypatch, caplog):
  # A jaxlib that renamed the experimental option must not break training.
  monkeypatch.setattr(fast_path_lib, "CPU_COMPILER_OPTIONS",
                      {"xla_cpu_no_such_option_exists": "1"})
  monkeypatch.setattr(fast_path_lib, "INIT_COMPILER_OPTIONS",
                      {"xla_cpu_no_such_init_option": "1"})
  fast_path_lib._options_supported.cache_clear()
  try:
    assert fast_path_lib.compiler_options(_cpu_mesh()) is None
    assert fast_path_lib.init_compiler_options(_cpu_mesh()) is None
  finally:
    fast_path_lib._options_supported.cache_clear()
  assert "xla_cpu_no_such_option_exists" in caplog.text
  assert "xla_cpu_no_such_init_option" in caplog.text


def _run_steps(cpu_fast_path, steps=3):
  config = _config(cpu_fast_path=cpu_fast_path)
  exp = experiment_lib.create_experiment(config)
  mesh = mesh_lib.create_mesh()
  state = state_lib.create_train_state(exp.model, exp.tx,
                                       exp.info.image_shape, 0, mesh)
  step = steps_lib.jit_train_step(exp.learning_rate_fn, mesh, cpu_fast_path)
  batches = data.create_train_iterator("synthetic", None, config.batch_size,
                                       0, prefetch=0,
                                       **config.dataset_options)
  first = mesh_lib.shard_batch(next(batches), mesh)
  hlo = step.lower(state, first).compile().as_text()
  # Eval-mode logits of the initial model on the first batch (binary
  # convolutions only see +-1, so their outputs are integers times a scale).
  logits0 = exp.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      first["image"], train=False)
  logits_fn = jax.jit(
      lambda s, x: exp.model.apply(
          {"params": s.params, "batch_stats": s.batch_stats}, x, train=False),
      compiler_options=fast_path_lib.compiler_options(mesh, cpu_fast_path))
  logits0_jit = logits_fn(state, first["image"])
  losses = []
  batch = first
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    batch = mesh_lib.shard_batch(next(batches), mesh)
  return {"hlo": hlo, "losses": losses,
          "params": jax.device_get(state.params),
          "batch_stats": jax.device_get(state.batch_stats),
          "opt_state": jax.device_get(state.opt_state),
          "logits0": np.asarray(logits0),
          "logits0_jit": np.asarray(logits0_jit)}


@pytest.fixture(scope="module")
def both_paths():
  return {fast: _run_steps(fast) for fast in (True, False)}


def test_fast_path_compiles_differently(both_paths):
  # Otherwise the options would be silently ignored and the test below
  # would compare a path with itself.
  assert both_paths[True]["hlo"] != both_paths[False]["hlo"]


def test_fast_and_portable_paths_give_equal_results(both_paths):
  fast, portable = both_paths[True], both_paths[False]
  # Measured here: logits and losses equal, params within 3e-8, optimizer
  # state within 4e-7 after 3 steps; a wrong convolution would be O(1) off.
  np.testing.assert_allclose(fast["logits0_jit"], portable["logits0_jit"],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fast["logits0_jit"], fast["logits0"],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fast["losses"], portable["losses"], rtol=1e-6)
  for name in ("params", "batch_stats", "opt_state"):
    leaves_f = jax.tree.leaves(fast[name])
    leaves_p = jax.tree.leaves(portable[name])
    assert len(leaves_f) == len(leaves_p) > 0
    for a, b in zip(leaves_f, leaves_p):
      a, b = np.asarray(a), np.asarray(b)
      if a.dtype == bool:  # SAD's stored signs
        assert np.array_equal(a, b), name
      else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_bfloat16_operands_give_the_float32_conv_bit_for_bit(strides):
  """`layers.binary_conv_general` with bfloat16 operands: same values and
  same gradients as the plain float32 convolution, exactly."""
  from ovsw_jax import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = np.sign(rng.standard_normal((4, 9, 9, 24))).astype(np.float32)
  w = np.sign(rng.standard_normal((3, 3, 24, 40))).astype(np.float32)
  g = rng.standard_normal((4, 5 if strides == (2, 2) else 9,
                           5 if strides == (2, 2) else 9, 40)
                          ).astype(np.float32)
  pad = ((1, 1), (1, 1))

  def run(dtype):
    f = lambda a, w: layers.binary_conv_general(  # pylint: disable=g-long-lambda
        a, w, strides, pad, dtype)
    y, vjp = jax.vjp(f, a, w)
    return (y, *vjp(g))

  narrow = jax.jit(lambda: run(jax.numpy.bfloat16))()
  plain = jax.jit(lambda: run(None))()
  for got, want in zip(narrow, plain):
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # And the plain one is the convolution (integer sums up to 9 * 24).
  assert np.abs(np.asarray(plain[0])).max() <= 216
  assert np.all(np.asarray(plain[0]) == np.round(np.asarray(plain[0])))


def test_trainer_narrows_only_exact_binary_convs(monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = methods.create_model(_config(), 10)
  assert model.binary_operand_dtype == jnp.bfloat16
  assert methods.create_model(
      _config(cpu_fast_path=False), 10).binary_operand_dtype is None
  # ReCU's conv is a BinaryConv with +-1 operands: narrowed too (bit-exact,
  # tests/test_recu.py).
  assert methods.create_model(_config(method="recu"), 10
                                ).binary_operand_dtype == jnp.bfloat16
  # A custom estimator may not be +-1: left alone.
  custom = _config()
  custom.model_options = {"activation_estimator": lambda x: x}
  assert methods.create_model(custom, 10).binary_operand_dtype is None
  # Other backends compile with the portable defaults.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert methods.create_model(_config(), 10).binary_operand_dtype is None


def test_configs_saved_before_the_fast_path_still_build_models():
  # A workdir's config.json from an older ovsw_jax has no cpu_fast_path;
  # exporting it must still work (and takes the fast path's default).
  config = _config()
  del config["cpu_fast_path"]
  assert methods.create_model(config, 10).binary_operand_dtype is not None


def test_init_options_are_chosen_per_backend():
  mesh = _cpu_mesh()
  assert (fast_path_lib.init_compiler_options(mesh)
          == fast_path_lib.INIT_COMPILER_OPTIONS)
  assert (fast_path_lib.init_compiler_options(mesh)
          is not fast_path_lib.INIT_COMPILER_OPTIONS)
  assert fast_path_lib.init_compiler_options(mesh, cpu_fast_path=False) is None
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert fast_path_lib.init_compiler_options(_fake_mesh(platform)) is None


def test_init_options_reach_the_compiler(monkeypatch, tmp_path):
  # XLA's dump of the options the init program compiled with says -O1. (A
  # seed no other test uses: a program from the session's compilation cache
  # would not be dumped.)
  exp = experiment_lib.create_experiment(_config())
  monkeypatch.setattr(fast_path_lib, "INIT_COMPILER_OPTIONS", {
      **fast_path_lib.INIT_COMPILER_OPTIONS, "xla_dump_to": str(tmp_path)})
  fast_path_lib._options_supported.cache_clear()
  chosen = []
  choose = fast_path_lib.init_compiler_options
  monkeypatch.setattr(fast_path_lib, "init_compiler_options",
                      lambda *a, **k: chosen.append(choose(*a, **k))
                      or chosen[-1])
  try:
    state_lib.create_train_state(exp.model, exp.tx, exp.info.image_shape,
                                 918273, _cpu_mesh())
    # The portable path passes no options at all.
    state_lib.create_train_state(exp.model, exp.tx, exp.info.image_shape,
                                 918273, _cpu_mesh(), cpu_fast_path=False)
  finally:
    fast_path_lib._options_supported.cache_clear()
  assert chosen[1] is None and chosen[0]["xla_backend_optimization_level"] == 1
  text = "".join(p.read_text() for p in tmp_path.glob("*jit_init*debug_options"))
  assert "xla_backend_optimization_level: 1" in text, sorted(
      p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("overrides,partitionable", [
    # The quickstart's model and optimizer, at its input shape, drawn as a
    # run draws them (JAX's default threefry; the suite's is not).
    ({"model": "cresnet20_1w1a", "model_options": {}, "method": "ovsw+adam",
      "dataset_options": {"image_shape": (16, 16, 1), "num_train": 64,
                          "num_eval": 16}}, True),
    # Other initialisers (ReActNet's learnable biases, the real-valued stem)
    # and SGD's state, as the suite draws them.
    ({"model": "reactnet_a_cifar", "model_options": {}, "method": "ovsw"},
     False),
], ids=["cresnet20", "reactnet_a_cifar"])
def test_fast_init_gives_the_default_compile_bit_for_bit(overrides,
                                                         partitionable):
  """The init program at INIT_COMPILER_OPTIONS (compiled in under half the
  time) holds exactly the values XLA's default compile gives."""
  exp = experiment_lib.create_experiment(_config(**overrides))
  mesh = _cpu_mesh()
  with jax.threefry_partitionable(partitionable):
    fast, default_ = (jax.device_get(state_lib.create_train_state(
        exp.model, exp.tx, exp.info.image_shape, 3, mesh, cpu_fast_path=fast))
                      for fast in (True, False))
  leaves_f = jax.tree.leaves(state_lib.checkpoint_items(fast))
  leaves_d = jax.tree.leaves(state_lib.checkpoint_items(default_))
  assert len(leaves_f) == len(leaves_d) > 60
  for a, b in zip(leaves_f, leaves_d):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Not a trivial pass: the params are random, not zeros.
  assert np.std(np.asarray(fast.params["conv1"]["kernel"])) > 0.01
