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


def _kd_part(tmp_path, seed, teacher_top1=0.8, **args):
  """A later invocation: the distilled arm only, with its teacher."""
  path = tmp_path / f"kd{seed}.json"
  runs = [_run("two_stage_kd", m, seed, top1)
          for m, top1 in (("adam", 0.61 + seed / 100),
                          ("ovsw+adam", 0.57))]
  path.write_text(json.dumps({
      "command": f"kd {seed}", "machine": {"cpus": 2},
      "args": {"epochs": 2, "width": 16, "seeds": str(seed),
               "schemes": "two_stage_kd", "teacher_width": 32,
               "teacher_epochs": 3, "teacher_seed": 0, **args},
      "teacher": {"width": 32, "epochs": 3, "final_eval_top1": teacher_top1},
      "runs": runs}))
  return str(path)


def test_merge_joins_distilled_arms_to_earlier_runs_of_the_same_budget(
    tmp_path):
  """A merge written before the teacher existed (no teacher arguments)
  merges with distilled files of the same budget; the distillation effect
  is the difference of the two-stage arms' means."""
  earlier = tmp_path / "earlier.json"
  earlier.write_text(json.dumps(react_stages.merge(
      [_part(tmp_path, 0), _part(tmp_path, 1)])))
  merged = react_stages.merge([str(earlier), _kd_part(tmp_path, 0),
                               _kd_part(tmp_path, 1)])
  assert merged["commands"] == ["seed 0", "seed 1", "kd 0", "kd 1"]
  assert len(merged["machines"]) == 4 and len(merged["runs"]) == 12
  assert merged["teacher"]["final_eval_top1"] == 0.8
  assert merged["args"]["teacher_width"] == 32
  effects = react_stages.effects(react_stages.aggregate(merged["runs"]))
  kd = effects["distilled_minus_labels/adam"]
  assert kd["per_seed"] == pytest.approx([0.61 - 0.60, 0.62 - 0.52])
  assert kd["mean"] == pytest.approx(0.615 - 0.56)
  assert effects["ovsw_minus_adam/two_stage_kd"]["mean"] == pytest.approx(
      0.57 - 0.615)
  with pytest.raises(ValueError, match="the budget.*'width': 8"):
    react_stages.merge([_part(tmp_path, 0), _kd_part(tmp_path, 1, width=8)])
  with pytest.raises(ValueError, match="the teacher.*'teacher_epochs': 5"):
    react_stages.merge([_kd_part(tmp_path, 0),
                        _kd_part(tmp_path, 1, teacher_epochs=5)])
  with pytest.raises(ValueError, match="the teacher.*0.7"):
    react_stages.merge([_kd_part(tmp_path, 0),
                        _kd_part(tmp_path, 1, teacher_top1=0.7)])
  with pytest.raises(ValueError, match=r"runs \[\('two_stage_kd', 'adam', 0"):
    react_stages.merge([_kd_part(tmp_path, 0), _kd_part(tmp_path, 0)])


def test_the_distilled_arm_and_the_teacher_are_configured_as_documented():
  from ovsw_jax.training import experiment  # pylint: disable=g-import-not-at-top
  args = react_stages._parser().parse_args(  # pylint: disable=protected-access
      ["--runs_dir=/runs", "--dataset=cifar10", "--batch_size=128",
       "--teacher_width=32", "--teacher_epochs=3"])
  teacher = react_stages.teacher_config(args)
  experiment.validate_config(teacher)
  assert (teacher.model, teacher.method, teacher.num_epochs,
          teacher.model_options.width, teacher.batch_size) == (
              "resnet18_cifar", "vanilla", 3, 32, 128)
  for stage in ("stage1", "stage2"):
    config = react_stages.stage_config(
        stage, "ovsw+adam", 1, 1, args, init_from="/runs/s1",
        teacher_workdir="/runs/teacher")
    experiment.validate_config(config)
    assert (config.teacher_workdir, config.distill_weight) == (
        "/runs/teacher", 1.0)


def test_a_trained_teacher_is_read_back_and_checked(tmp_path):
  """The second process finds the teacher's result instead of training it
  again, and refuses one trained with other settings."""
  args = react_stages._parser().parse_args(  # pylint: disable=protected-access
      [f"--runs_dir={tmp_path}", "--teacher_width=16", "--teacher_epochs=3"])
  react_stages.teacher_dir(args).mkdir()
  record = {"model": "resnet18_cifar", "width": 16, "epochs": 3, "seed": 0,
            "final_eval_top1": 0.7, "curve": [], "wall_s": 9.0}
  (react_stages.teacher_dir(args) / react_stages.TEACHER_RESULT).write_text(
      json.dumps(record))
  assert react_stages.run_teacher(args) == record
  args.teacher_epochs = 4
  with pytest.raises(ValueError, match="'epochs': 3.*'epochs': 4"):
    react_stages.run_teacher(args)


def test_a_curve_keeps_one_point_per_epoch(tmp_path):
  # A finished stage's rerun once evaluated its checkpoint again and
  # appended the same record: the curve and the merge keep one per epoch.
  curve = [{"epoch": 1.0, "eval_top1": 0.4}, {"epoch": 1.0, "eval_top1": 0.4},
           {"epoch": 2.0, "eval_top1": 0.5}, {"epoch": 2.0, "eval_top1": 0.5}]
  assert react_stages.one_point_per_epoch(curve) == [curve[1], curve[3]]
  run = {**_run("two_stage", "adam", 0, 0.5), "curve": curve}
  path = tmp_path / "dup.json"
  path.write_text(json.dumps({
      "command": "dup", "machine": {}, "args": {"epochs": 2, "width": 16},
      "runs": [run]}))
  merged = react_stages.merge([str(path)])
  assert [p["epoch"] for p in merged["runs"][0]["curve"]] == [1.0, 2.0]
