"""Deployment: trained model -> packed 1-bit file -> XNOR-popcount inference.

* `bitpack`: sign packing, XNOR-popcount conv and dense (JAX);
* `native`: the C++ XNOR-popcount conv behind XLA's FFI, built at install
  when a C++ compiler is present (`infer` uses it on CPU where it is);
* `export`: `export_model`, a model and its variables -> `PackedModel`;
* `format`: the packed file, format v1 (`PackedModel`, `save`, `load`);
* `infer`: `apply`, `make_predict_fn`, `evaluate` of a packed model;
* `cli`: `export_checkpoint` (a training workdir -> packed file) and the
  command lines, ``python -m ovsw_jax.deploy export|evaluate``. It is the
  only deploy module that imports `ovsw_jax.training`, and is not imported
  here.

Example::

  from ovsw_jax import deploy
  packed_model = deploy.export_model(model, variables, model_name=...,
                                     model_options={}, image_shape=(32, 32, 3))
  deploy.save(packed_model, "m.npz")
  logits = deploy.make_predict_fn(deploy.load("m.npz"))(images)
"""

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format  # pylint: disable=redefined-builtin
from ovsw_jax.deploy import infer
from ovsw_jax.deploy import native
from ovsw_jax.deploy.export import export_model
from ovsw_jax.deploy.format import load
from ovsw_jax.deploy.format import PackedFormatError
from ovsw_jax.deploy.format import PackedModel
from ovsw_jax.deploy.format import save
from ovsw_jax.deploy.infer import apply
from ovsw_jax.deploy.infer import evaluate
from ovsw_jax.deploy.infer import make_predict_fn

__all__ = [
    "PackedFormatError", "PackedModel", "apply", "bitpack", "evaluate",
    "export", "export_model", "format", "infer", "load", "make_predict_fn",
    "native", "save",
]
