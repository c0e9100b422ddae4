"""A bit-aware model summary: per-layer params, bits, memory and MACs.

`summary(model, input_shape)` traces the model once with `jax.eval_shape`
(no parameter is allocated, so ReActNet-A's 29M params cost nothing) and
returns a `Summary`: one `LayerRow` per layer, in call order, then totals.
Like larq's ``lq.models.summary``, it tells binary from float:

* binary and float parameter counts (a binary layer's ``latent_kernel`` is
  binary; its scale, and every other param, float);
* bits of the weights and of the inputs (1 or 32);
* memory while training (every param and BatchNorm statistic in float32)
  and once packed: the bytes of the arrays `ovsw_jax.deploy.export` writes
  (32 signs to a uint32 word per output channel and tap, int32 tap sums for
  a conv, a float32 scale per channel; float layers and BatchNorm in
  float32). The packed file is larger by its container (a JSON header and
  the .npz/.npy headers, some tens of KB: ``container_bytes`` in the
  export's output);
* binary and float multiply-accumulates at batch size 1 (convs and denses).

A `Summary` shows its table wherever it is displayed: ``print(s)``, a REPL
(``repr``) and a notebook (an HTML table).

Command line::

  python -m ovsw_jax.summary --model=cresnet20_1w1a [--num_classes=10]
      [--image_shape=32,32,3]
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import react
from ovsw_jax.models import blocks

_BINARY = (layers.BinaryConv, layers.BinaryDense)
# Modules shown as one row (params of their submodules included).
_LAYERS = _BINARY + (nn.Conv, nn.Dense, nn.BatchNorm, react.RSign,
                     react.RPReLU, react.LearnableBias, blocks.PReLU)
_WORD_BITS = 32


@dataclasses.dataclass
class LayerRow:
  """One layer of a `Summary`.

  Attributes:
    name: the module path, '/'-joined.
    kind: the module's class name.
    output_shape: its output's shape without the batch axis.
    binary_params: parameters stored as signs once packed.
    float_params: every other parameter.
    weight_bits: 1 for binary weights, 32 otherwise (0: no weights).
    input_bits: 1 where the layer binarizes its input, else 32.
    training_bytes: params and BatchNorm statistics in float32.
    packed_bytes: the bytes of the arrays `ovsw_jax.deploy.export` stores
      for the layer (its packed weights; the file's container not counted).
    binary_macs: XNOR-popcount multiply-accumulates (batch size 1).
    float_macs: float multiply-accumulates (batch size 1).
  """
  name: str
  kind: str
  output_shape: tuple[int, ...]
  binary_params: int = 0
  float_params: int = 0
  weight_bits: int = 0
  input_bits: int = 32
  training_bytes: int = 0
  packed_bytes: int = 0
  binary_macs: int = 0
  float_macs: int = 0


_HEAD = ("layer", "kind", "output", "bin params", "float params",
         "bits w/a", "train KiB", "packed KiB", "bin MACs", "float MACs")


@dataclasses.dataclass(repr=False)
class Summary:
  """A model's `LayerRow`s and their totals.

  ``str``, ``repr`` and a notebook's display show the table (`table`; in a
  notebook as HTML).

  Attributes:
    rows: the layers, in call order.
  """
  rows: list[LayerRow]

  def __str__(self) -> str:
    return self.table()

  __repr__ = __str__

  def _repr_html_(self) -> str:
    """The table for notebooks: one HTML row a layer, totals last."""
    cells = self._cells()
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in _HEAD)
            + "</tr>"]
    for i, row in enumerate(cells):
      tag = "th" if i == len(cells) - 1 else "td"
      rows.append("<tr>" + "".join(
          f'<{tag} style="text-align:{"left" if j < 3 else "right"}">'
          f"{html.escape(c)}</{tag}>" for j, c in enumerate(row)) + "</tr>")
    return (f"<table>{''.join(rows)}</table>"
            f"<p>{html.escape(self._footer())}</p>")

  def total(self, field: str) -> int:
    """The sum of ``field`` (e.g. 'packed_bytes') over the rows."""
    return sum(getattr(r, field) for r in self.rows)

  @property
  def compression_ratio(self) -> float:
    """float32 bytes of every param and statistic / packed bytes."""
    return self.total("training_bytes") / max(self.total("packed_bytes"), 1)

  def _cells(self) -> list[tuple[str, ...]]:
    """Each layer's cells as text, then the totals'."""
    body = [(r.name, r.kind, "x".join(map(str, r.output_shape)),
             f"{r.binary_params:,}", f"{r.float_params:,}",
             f"{r.weight_bits or '-'}/{r.input_bits}",
             f"{r.training_bytes / 1024:,.1f}",
             f"{r.packed_bytes / 1024:,.1f}", f"{r.binary_macs:,}",
             f"{r.float_macs:,}") for r in self.rows]
    total = ("total", "", "", f"{self.total('binary_params'):,}",
             f"{self.total('float_params'):,}", "",
             f"{self.total('training_bytes') / 1024:,.1f}",
             f"{self.total('packed_bytes') / 1024:,.1f}",
             f"{self.total('binary_macs'):,}",
             f"{self.total('float_macs'):,}")
    return [*body, total]

  def _footer(self) -> str:
    params = self.total("binary_params") + self.total("float_params")
    return (f"params: {params:,} ({self.total('binary_params'):,} binary); "
            f"float32 size {self.total('training_bytes') / 2**20:,.2f} MiB, "
            f"packed weights {self.total('packed_bytes') / 2**20:,.2f} MiB "
            "(the exported file adds its container): compression ratio "
            f"{self.compression_ratio:.2f}x")

  def table(self) -> str:
    """The summary as a text table, totals and compression ratio last."""
    *body, total = self._cells()
    widths = [max(len(row[i]) for row in [_HEAD, total, *body])
              for i in range(len(_HEAD))]

    def line(row):
      return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(line(_HEAD))
    return "\n".join([line(_HEAD), rule, *map(line, body), rule,
                      line(total), self._footer()])


def _size(leaf: Any) -> int:
  return int(np.prod(leaf.shape))


def _subtree(tree: Any, path: Sequence[str]) -> Any:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return {}
    tree = tree[key]
  return tree


def _trace(model: nn.Module, input_shape: Sequence[int]):
  """``(calls, variables)``: the top-level layer calls in order, as
  ``(path, module, input shape, output shape)``, and the abstract
  variables."""
  calls, active = [], []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    # A layer's own sublayers (RPReLU's shifts) stay in its row.
    top = (context.method_name == "__call__" and isinstance(module, _LAYERS)
           and not active)
    if top:
      active.append(module)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      if top:
        active.pop()
    if top:
      calls.append((tuple(module.path), module, tuple(args[0].shape),
                    tuple(out.shape)))
    return out

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.PRNGKey(0),
                        jnp.zeros((1, *input_shape), jnp.float32))

  variables = jax.eval_shape(init)
  return calls, variables


def _binary_row(row: LayerRow, module, in_shape, out_shape, kernel) -> None:
  """Fills a binary layer's bits, packed bytes and MACs."""
  *taps, c_in, c_out = kernel.shape
  words = math.ceil(c_in / _WORD_BITS)
  binary = module.binarize_weights and module.binarize_activations
  row.weight_bits = 1 if module.binarize_weights else 32
  row.input_bits = 1 if module.binarize_activations else 32
  row.binary_params = _size(kernel) if module.binarize_weights else 0
  row.float_params -= row.binary_params
  spatial = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
  macs = spatial * _size(kernel)
  row.binary_macs, row.float_macs = (macs, 0) if binary else (0, macs)
  if not binary:
    return  # Not packable (export refuses it): packed = float32.
  n_taps = int(np.prod(taps)) if taps else 1
  # The export's arrays: w (uint32 words), tap_sums (int32, convs), mul.
  row.packed_bytes = 4 * (c_out * n_taps * words + c_out)
  if taps:
    row.packed_bytes += 4 * n_taps * c_out
  del in_shape


def summary(model: nn.Module, input_shape: Sequence[int]) -> Summary:
  """The per-layer summary of ``model`` on one ``input_shape`` (H, W, C) image.

  Args:
    model: a Flax module, e.g. ``ovsw_jax.models.get_model(name, classes)``.
    input_shape: one image's shape, without the batch axis.

  Returns:
    A `Summary`; ``print(s)``, or ``s`` in a REPL or notebook, shows it.
  """
  calls, variables = _trace(model, tuple(input_shape))
  params = variables.get("params", {})
  stats = variables.get("batch_stats", {})
  rows = []
  for path, module, in_shape, out_shape in calls:
    own = jax.tree.leaves(_subtree(params, path))
    own_stats = jax.tree.leaves(_subtree(stats, path))
    n = sum(_size(x) for x in own)
    row = LayerRow("/".join(path), type(module).__name__,
                   tuple(out_shape[1:]), float_params=n,
                   training_bytes=4 * (n + sum(_size(x) for x in own_stats)))
    row.packed_bytes = row.training_bytes
    if isinstance(module, _BINARY):
      kernel = _subtree(params, path)[layers.LATENT_KERNEL]
      _binary_row(row, module, in_shape, out_shape, kernel)
    elif isinstance(module, (nn.Conv, nn.Dense)):
      kernel = _subtree(params, path)["kernel"]
      spatial = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
      row.weight_bits, row.float_macs = 32, spatial * _size(kernel)
    rows.append(row)
  return Summary(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m ovsw_jax.summary --model=NAME``: prints the table."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m ovsw_jax.summary",
      description="Per-layer binary/float params, bits, memory and MACs.")
  parser.add_argument("--model", required=True,
                      help=f"one of {models.list_models()}")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: 10 at 32x32 inputs, else 1000")
  parser.add_argument("--image_shape", default=None,
                      help="H,W,C; default: the model's (models.INPUT_SHAPES)")
  args = parser.parse_args(argv)
  if args.model.lower() not in models.list_models():
    parser.error(f"--model={args.model!r}: expected one of "
                 f"{models.list_models()}")
  shape = (tuple(int(d) for d in args.image_shape.split(","))
           if args.image_shape else models.INPUT_SHAPES[args.model.lower()])
  classes = args.num_classes or (10 if shape[0] <= 32 else 1000)
  model = models.get_model(args.model, classes)
  print(f"{args.model}, {classes} classes, input {'x'.join(map(str, shape))}")
  print(summary(model, shape))
  return 0
