"""benchmarks/react_stages.py's bookkeeping: per-arm means, the two claims'
differences and the merge of per-seed files (the trainings themselves are
the trainer's, tested in test_stages.py)."""

import json

import pytest

from benchmarks import react_stages


def _run(scheme, method, seed, top1):
  return {"scheme": scheme, "method": method, "seed": seed,
          "final_eval_top1": top1, "curve": [], "wall_s": 1.0}


RUNS = [_run("one_stage", "adam", 0, 0.50), _run("one_stage", "adam", 1, 0.54),
        _run("two_stage", "adam", 0, 0.60), _run("two_stage", "adam", 1, 0.52),
        _run("one_stage", "ovsw+adam", 0, 0.55),
        _run("one_stage", "ovsw+adam", 1, 0.57),
        _run("two_stage", "ovsw+adam", 0, 0.58),
        _run("two_stage", "ovsw+adam", 1, 0.62)]


def test_arms_and_effects_are_the_differences_of_means():
  arms = react_stages.aggregate(RUNS)
  assert arms["one_stage/adam"]["mean"] == pytest.approx(0.52)
  assert arms["one_stage/adam"]["std"] == pytest.approx(0.02)
  assert arms["two_stage/ovsw+adam"]["values"] == [0.58, 0.62]
  effects = react_stages.effects(arms)
  two = effects["two_stage_minus_one_stage/adam"]
  assert two["mean"] == pytest.approx(0.56 - 0.52)
  assert two["per_seed"] == pytest.approx([0.10, -0.02])
  assert not two["same_sign_every_seed"]
  ovsw = effects["ovsw_minus_adam/one_stage"]
  assert ovsw["per_seed"] == pytest.approx([0.05, 0.03])
  assert ovsw["same_sign_every_seed"]
  assert set(effects) == {
      "two_stage_minus_one_stage/adam", "two_stage_minus_one_stage/ovsw+adam",
      "ovsw_minus_adam/one_stage", "ovsw_minus_adam/two_stage"}


def _part(tmp_path, seed, **args):
  path = tmp_path / f"seed{seed}.json"
  path.write_text(json.dumps({
      "command": f"seed {seed}", "machine": {"cpus": 2},
      "args": {"epochs": 2, "width": 16, "seeds": str(seed), "out": str(path),
               "merge": None, **args},
      "runs": [r for r in RUNS if r["seed"] == seed]}))
  return str(path)


def test_merge_joins_per_seed_files_and_refuses_other_settings(tmp_path):
  merged = react_stages.merge([_part(tmp_path, 1), _part(tmp_path, 0)])
  assert merged["seeds"] == [0, 1]
  assert merged["commands"] == ["seed 1", "seed 0"]
  assert [r["seed"] for r in merged["runs"]] == [0] * 4 + [1] * 4
  assert react_stages.aggregate(merged["runs"]) == react_stages.aggregate(RUNS)
  with pytest.raises(ValueError, match="width"):
    react_stages.merge([_part(tmp_path, 0), _part(tmp_path, 1, width=8)])


def test_main_merges_into_a_json_and_a_png(tmp_path):
  out = tmp_path / "merged.json"
  react_stages.main(["--runs_dir", str(tmp_path / "unused"), "--out", str(out),
                     "--merge", f"{_part(tmp_path, 0)},{_part(tmp_path, 1)}"])
  result = json.loads(out.read_text())
  assert result["arms"]["two_stage/adam"]["n"] == 2
  assert result["effects"]["ovsw_minus_adam/two_stage"]["mean"] == (
      pytest.approx(0.60 - 0.56))
  assert out.with_suffix(".png").stat().st_size > 0
