"""Distillation from a frozen teacher: ReActNet's distribution loss.

`distribution_loss` is ReActNet's ``DistributionLoss`` (KD_loss.py): the
cross-entropy of the student's log-softmax against the teacher's softmax,
``-sum_c p_t(c) log q_s(c)`` averaged over the batch. It equals
``KL(p_t || q_s)`` plus the teacher's entropy, a constant of the student,
so its gradient is KL's: ``(q_s - p_t) / N`` in the student's logits.

`load_teacher` builds the config's `Teacher` (a workdir of ours or a
converted reference .pth); the train step computes its logits inside the
jitted step from its frozen variables (no gradient) and `training_loss`
mixes them in with ``config.distill_weight``.

References:
  Liu et al., 2020. ReActNet: Towards Precise Binary Neural Network with
  Generalized Activation Functions. https://arxiv.org/abs/2003.03488
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovsw_jax import convert
from ovsw_jax import models
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import warm_start


@struct.dataclass
class Teacher:
  """A frozen network whose soft labels the student learns.

  Attributes:
    variables: ``{'params', 'batch_stats', ...}``, replicated; a pytree
      leaf of the train state, so the jitted step reads it as an argument.
    apply_fn: static; the teacher module's ``apply``.
    weight: static; ``w`` in ``(1 - w) * CE + w * distribution loss``.
  """
  variables: Any
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  weight: float = struct.field(pytree_node=False, default=1.0)

  def logits(self, images: jax.Array) -> jax.Array:
    """The teacher's float32 eval-mode logits, with no gradient."""
    logits = self.apply_fn(self.variables, images, train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))


def distribution_loss(student_logits: jax.Array,
                      teacher_logits: jax.Array) -> jax.Array:
  """ReActNet's distribution loss, ``mean_n -sum_c softmax(t) log_softmax(s)``.

  Args:
    student_logits: ``(N, C)``.
    teacher_logits: ``(N, C)``; no gradient flows into them.

  Returns:
    The scalar loss (float32 for float32 logits).
  """
  soft = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  return optax.softmax_cross_entropy(student_logits, soft).mean()


def training_loss(logits: jax.Array, labels: jax.Array,
                  teacher_logits: Optional[jax.Array], weight: float
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy, or ``(1 - w) CE + w * distribution_loss`` with a teacher.

  Returns:
    The loss and the extra metrics ({'distill_loss'} with a teacher).
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  if teacher_logits is None:
    return ce, {}
  kd = distribution_loss(logits, teacher_logits)
  # Exactly kd (or ce) at weight 1 (or 0): no 0 * ce term to round.
  if weight == 1:
    return kd, {"distill_loss": kd}
  if weight == 0:
    return ce, {"distill_loss": kd}
  return (1 - weight) * ce + weight * kd, {"distill_loss": kd}


def load_teacher(config: ml_collections.ConfigDict, num_classes: int,
                 mesh: jax.sharding.Mesh) -> Optional[Teacher]:
  """The config's teacher, replicated over ``mesh``; None without one.

  Args:
    config: reads teacher_workdir, teacher_checkpoint, teacher_file (a
      ``.npz`` written by ``python -m ovsw_jax.convert``, or a PyTorch
      checkpoint of model teacher_model), teacher_model, distill_weight.
    num_classes: the student's head width (the teacher's must match).
    mesh: where the teacher's variables go.

  Raises:
    ValueError: teacher_model disagrees with the workdir's or the
      converted file's model, or the file does not fit it.
    FileNotFoundError: no such workdir, checkpoint or file.
  """
  if config.teacher_workdir:
    teacher_config, model, variables, _ = warm_start.restore_variables(
        config.teacher_workdir, config.teacher_checkpoint, mesh)
    if config.teacher_model and config.teacher_model != teacher_config.model:
      raise ValueError(
          f"config.teacher_model={config.teacher_model!r} but "
          f"{config.teacher_workdir} trained {teacher_config.model!r}; leave "
          "teacher_model unset with a teacher_workdir")
  elif config.teacher_file:
    # A converted .npz names its model; a .pth needs teacher_model.
    name, variables = convert.load_variables(
        config.teacher_file, config.teacher_model, num_classes)
    model = models.get_model(name, num_classes)
    variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  else:
    return None
  return Teacher(variables=variables, apply_fn=model.apply,
                 weight=float(config.distill_weight))
