"""The 'model' parts of the peer BNN methods RBNN ('rbnn') and AdaBin ('adabin').

Registered in `methods`' registry when `ovsw_jax.training` is imported, like
'recu' and 'irnet' there: each gives its binary conv (and AdaBin its Maxout)
to the model and schedules its non-trainable state, so 'rbnn+ovsw' and
'adabin+ovsw' combine with the gradient parts with no special case.
"""

from __future__ import annotations

import functools

import jax

from ovsw_jax import adabin
from ovsw_jax import irnet
from ovsw_jax import rbnn
from ovsw_jax.training.methods import ModelChange
from ovsw_jax.training.methods import register_method


def _rbnn(config):
  """RBNN convs (`ovsw_jax.rbnn.RBNNConv`): (k, t) per epoch, and the
  rotations fitted to the weights at every rbnn_rotation_update-th epoch's
  first step."""

  def update(model_state, epoch, num_epochs):
    k, t = irnet.ede_schedule(epoch, num_epochs, config.rbnn_t_min,
                              config.rbnn_t_max)
    tree = rbnn.set_schedule(model_state[rbnn.COLLECTION], k, t)
    return {**model_state, rbnn.COLLECTION: tree}, {"rbnn_k": k, "rbnn_t": t}

  def epoch_start(model_state, params, epoch):
    tree = model_state[rbnn.COLLECTION]
    tree = jax.lax.cond(epoch % config.rbnn_rotation_update == 0,
                        lambda v: rbnn.rotate_layers(v, params),
                        lambda v: v, tree)
    return {**model_state, rbnn.COLLECTION: tree}

  k, t = irnet.ede_schedule(0, 1, config.rbnn_t_min, config.rbnn_t_max)
  conv = functools.partial(rbnn.RBNNConv, k_init=k, t_init=t)
  return ModelChange(options={"conv": conv}, update=update,
                     epoch_start=epoch_start)


def _adabin(config):
  """AdaBin convs (`ovsw_jax.adabin.AdaBinConv`) and Maxout, EDE's (k, t)
  set per epoch."""

  def update(model_state, epoch, num_epochs):
    k, t = irnet.ede_schedule(epoch, num_epochs, config.adabin_t_min,
                              config.adabin_t_max)
    tree = irnet.set_ede(model_state[adabin.COLLECTION], k, t)
    return ({**model_state, adabin.COLLECTION: tree},
            {"adabin_k": k, "adabin_t": t})

  k, t = irnet.ede_schedule(0, 1, config.adabin_t_min, config.adabin_t_max)
  conv = functools.partial(adabin.AdaBinConv, k_init=k, t_init=t)
  return ModelChange(options={"conv": conv, "nonlinearity": adabin.Maxout},
                     update=update)


register_method("rbnn", "model", _rbnn)
register_method("adabin", "model", _adabin)
