"""The 'model' parts of the peer BNN methods IR-Net ('irnet'), RBNN ('rbnn')
and AdaBin ('adabin').

Registered in `methods`' registry when `ovsw_jax.training` is imported, like
'recu' there: each gives its binary conv (and AdaBin its Maxout) to the
model and schedules its non-trainable state, so 'irnet+ovsw', 'rbnn+ovsw'
and 'adabin+ovsw' combine with the gradient parts with no special case. All
three anneal an EDE-style (k, t) per epoch (`_ede_change`).
"""

from __future__ import annotations

import functools

import jax

from ovsw_jax import adabin
from ovsw_jax import irnet
from ovsw_jax import rbnn
from ovsw_jax.training.methods import ModelChange
from ovsw_jax.training.methods import register_method


def _ede_change(name, collection, set_schedule, t_min, t_max):
  """The first epoch's (k, t) and the per-epoch update that sets them.

  ``update(model_state, epoch, num_epochs)`` writes IR-Net's annealed
  (k, t) (`irnet.ede_schedule` from t_min to t_max) into ``collection``
  through ``set_schedule`` and logs them as ``<name>_k`` / ``<name>_t``.
  """

  def update(model_state, epoch, num_epochs):
    k, t = irnet.ede_schedule(epoch, num_epochs, t_min, t_max)
    tree = set_schedule(model_state[collection], k, t)
    return ({**model_state, collection: tree},
            {f"{name}_k": k, f"{name}_t": t})

  return irnet.ede_schedule(0, 1, t_min, t_max), update


def _irnet(config):
  """IR-Net convs (`ovsw_jax.irnet.IRNetConv`), EDE's (k, t) set per epoch."""
  (k, t), update = _ede_change("irnet", irnet.EDE_COLLECTION, irnet.set_ede,
                               config.irnet_t_min, config.irnet_t_max)
  conv = functools.partial(irnet.IRNetConv, k_init=k, t_init=t)
  return ModelChange(options={"conv": conv}, update=update)


def _rbnn(config):
  """RBNN convs (`ovsw_jax.rbnn.RBNNConv`): (k, t) per epoch, and the
  rotations fitted to the weights at every rbnn_rotation_update-th epoch's
  first step."""

  def epoch_start(model_state, params, epoch):
    tree = model_state[rbnn.COLLECTION]
    tree = jax.lax.cond(epoch % config.rbnn_rotation_update == 0,
                        lambda v: rbnn.rotate_layers(v, params),
                        lambda v: v, tree)
    return {**model_state, rbnn.COLLECTION: tree}

  (k, t), update = _ede_change("rbnn", rbnn.COLLECTION, rbnn.set_schedule,
                               config.rbnn_t_min, config.rbnn_t_max)
  conv = functools.partial(rbnn.RBNNConv, k_init=k, t_init=t)
  return ModelChange(options={"conv": conv}, update=update,
                     epoch_start=epoch_start)


def _adabin(config):
  """AdaBin convs (`ovsw_jax.adabin.AdaBinConv`) and Maxout, EDE's (k, t)
  set per epoch."""

  (k, t), update = _ede_change("adabin", adabin.COLLECTION, irnet.set_ede,
                               config.adabin_t_min, config.adabin_t_max)
  conv = functools.partial(adabin.AdaBinConv, k_init=k, t_init=t)
  return ModelChange(options={"conv": conv, "nonlinearity": adabin.Maxout},
                     update=update)


register_method("irnet", "model", _irnet)
register_method("rbnn", "model", _rbnn)
register_method("adabin", "model", _adabin)
