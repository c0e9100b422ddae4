"""benchmarks/throughput.py at a tiny size: schema, ratios, the plot."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_records_each_batch_size_with_consistent_ratios(tmp_path):
  out = tmp_path / "throughput.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  # `python -c` puts its working directory, the repo root, on its path.
  code = f"""
from benchmarks import throughput
r = throughput.sweep([4, 8], image_size=8, steps=2, warmup=1, block=1,
                     model_options={{"stage_sizes": (1, 1, 1)}})
r["command"] = "test"
from pathlib import Path
import json
Path({str(out)!r}).write_text(json.dumps(r))
throughput.plot(r, Path({str(out.with_suffix(".png"))!r}))
"""
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(out.read_text())
  assert r["benchmark"] == "throughput"
  assert [p["batch_size"] for p in r["points"]] == [4, 8]
  for p in r["points"]:
    ips = p["images_per_sec"]
    assert set(ips) == {"ours/ovsw", "ours/vanilla", "ours/ovsw_portable"}
    assert all(v > 0 for v in ips.values())
    assert p["ratios"]["fast_path_over_portable"] == pytest.approx(
        ips["ours/ovsw"] / ips["ours/ovsw_portable"])
    assert p["ratios"]["ovsw_over_vanilla_step_time"] == pytest.approx(
        ips["ours/vanilla"] / ips["ours/ovsw"])
    assert "ours_over_torch" not in p["ratios"]  # no --compare_torch
  png = out.with_suffix(".png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_empty_sweep_is_refused():
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="batch_sizes"):
    throughput.sweep([])
