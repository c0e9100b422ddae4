"""The figure of `python -m benchmarks.accelerator`: step speed, the loop by
input, time to accuracy (per epoch and against wall time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def _step_panel(ax, step: Mapping[str, Any]) -> None:
  sizes = list(step.get("batch_sizes", {}))
  arms = sorted({a for s in sizes for a in step["batch_sizes"][s]["arms"]})
  width = 0.8 / max(len(arms), 1)
  for i, arm in enumerate(arms):
    values = [step["batch_sizes"][s]["arms"].get(arm, {}).get(
        "images_per_sec", 0.0) for s in sizes]
    ax.bar([j + i * width for j in range(len(sizes))], values, width,
           label=arm)
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))])
  ax.set_xticklabels([f"batch {s}" for s in sizes])
  ax.set_ylabel("images/s (step alone)")
  ax.set_title("Train step: ours vs the reference's PyTorch")
  ax.legend(fontsize=7)


def _loop_panel(ax, loop: Mapping[str, Any]) -> None:
  if not loop.get("arms"):
    ax.set_title("Training loop: not measured")
    return
  names = ["host input", "device input", "step alone"]
  values = [loop["arms"]["host"]["images_per_sec"],
            loop["arms"]["device"]["images_per_sec"],
            loop["step_alone"]["images_per_sec"]]
  bars = ax.bar(names, values, color=["tab:orange", "tab:green", "tab:gray"])
  for bar, arm in zip(bars, ("host", "device")):
    share = loop["arms"][arm]["input_share_of_epoch"]
    ax.annotate(f"input {100 * share:.1f}% of the epoch",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=7)
  ax.set_ylabel("images/s")
  alone = loop.get("input_alone", {})
  note = (f"\nbatch made alone: host {alone['host']['batch_ms']:.1f} ms, "
          f"device {alone['device']['batch_ms']:.2f} ms" if alone else "")
  ax.set_title(f"Trainer on CIFAR-10, batch {loop['batch_size']}{note}",
               fontsize=10)


def _tta_panels(ax_epoch, ax_wall, tta: Mapping[str, Any]) -> None:
  for side in ("ours", "torch"):
    if side not in tta:
      continue
    history = tta[side]["history"]
    epochs = [h["epoch"] for h in history]
    top1 = [100 * h["eval_top1"] for h in history]
    wall, t = [], 0.0
    for h in history:
      t += h["train_s"] + h["eval_s"]
      wall.append(t)
    label = (f"{side} ({tta[side]['projected_600_epochs_hours']:.2f} h "
             "projected for 600 epochs)")
    ax_epoch.plot(epochs, top1, marker="o", label=label)
    ax_wall.plot(wall, top1, marker="o", label=side)
  ax_epoch.set_xlabel("epoch")
  ax_epoch.set_ylabel("test top-1 (%)")
  ax_epoch.set_title(f"Recipe shortened to {tta.get('epochs')} epochs")
  ax_epoch.legend(fontsize=7)
  ax_wall.set_xlabel("wall time (s, train + eval)")
  ax_wall.set_ylabel("test top-1 (%)")
  ax_wall.set_title("Time to accuracy")


def plot(result: Mapping[str, Any], path: str | Path) -> None:
  """Writes the four panels, titled with the device and versions."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  _step_panel(axes[0][0], result.get("step_speed", {}))
  _loop_panel(axes[0][1], result.get("loop", {}))
  _tta_panels(axes[1][0], axes[1][1], result.get("time_to_accuracy", {}))
  device = result["device"]
  versions = result["versions"]
  fig.suptitle(f"{device['description']} - jax {versions['jax']}, torch "
               f"{versions['torch']} - {result['config']['size']} size",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
