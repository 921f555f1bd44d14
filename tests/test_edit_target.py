"""Training to a stated strength on tiny models: the run stops at the first check that reaches
the target and records it (the recorded strength is what the evaluation's scorer measures); an
unreachable target is reported; NaN settings and NaN training are refused; runs are bitwise
deterministic."""

import json
import math
import sys
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from mechunlearn.cli.app import app, main
from mechunlearn.edit import EditConfig, train, train_log, train_sequential
from mechunlearn.edit import target as target_module
from mechunlearn.edit.config import FLOATS
from mechunlearn.errors import MechunlearnError, TrainingDivergedError
from mechunlearn.facts import answer_probs, sequential_blocks
from test_edit import (
    ALONE,
    football_split,
    golf_split,
    quick,
    sharp_tiny,
    snapshot,
    tiny_athletes,
    write_workspace,
)

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = "blocks.1..3.mlp"
# at lr 1e-4 the sharp tiny model's P(golf) climbs 0.17 -> ~0.74 over 12 steps, one check per step
EDIT = {"steps": 12, "lr": 1e-4, "check_every": 1}


def test_training_stops_at_the_target_and_records_it():
    split = golf_split()
    lm = sharp_tiny()
    result = train(lm, COMPONENTS, split, quick(target=0.6, **EDIT), progress=False)
    record = result.target
    steps = record["steps"]
    assert record["reached"] and 1 < steps < EDIT["steps"]
    assert len(result.history) == steps and result.history[-1]["step"] == steps
    assert [c[0] for c in record["checks"]] == list(range(1, steps + 1))
    assert record["checks"][-2][1] < 0.6 <= record["strength"] == record["checks"][-1][1]
    _, p_new = answer_probs(lm.model, lm.tokenizer, split.forget)  # the evaluation's training-format P
    assert record["strength"] == pytest.approx(float(p_new.mean()), abs=1e-6)
    assert "P(edit target)" in record["measure"] and "answer set" in record["measure"]


def test_checks_leave_training_unchanged_and_the_schedule_spans_the_cap():
    """The first steps of a run with a target equal those of the same run without one: same
    losses, same lr (the cosine runs over the cap, not over the steps used)."""
    split = golf_split()
    full = train(sharp_tiny(), COMPONENTS, split, quick(**EDIT), progress=False)
    stopped = train(sharp_tiny(), COMPONENTS, split, quick(target=0.6, **EDIT), progress=False)
    assert full.target is None and len(full.history) == EDIT["steps"]
    assert stopped.history == full.history[: len(stopped.history)]
    every5 = train(sharp_tiny(), COMPONENTS, split, quick(target=0.99, **{**EDIT, "check_every": 5}), progress=False)
    assert [c[0] for c in every5.target["checks"]] == [5, 10, 12]  # and one after the last step


def _open(split):
    """The split with its forget facts scored over the whole vocabulary (an open answer set)."""
    return replace(split, forget=replace(split.forget, answers=None, edit_only_answers=()))


@pytest.mark.parametrize("case", ["edit", "unlearn", "open vocabulary"])
def test_checks_read_off_the_next_steps_forward_equal_separate_passes(case, monkeypatch):
    """Each check rides on the next step's forward (no pass of its own until the cap) and reads
    the same strength a separate pass reads, so the run is the same: same losses, same stopping
    step, same weights."""
    split, config = golf_split(), quick(target=0.6, **EDIT)
    if case == "unlearn":
        split = football_split()
        config = quick(objective="log1m", forget_over="answers", target=0.5, steps=12, lr=3e-5, check_every=1, **ALONE)
    elif case == "open vocabulary":
        split, config = _open(split), quick(target=0.5, **{**EDIT, "lr": 1e-3})
    passes = []
    real = target_module.forget_strength
    monkeypatch.setattr(target_module, "forget_strength", lambda *a, **k: passes.append(1) or real(*a, **k))
    runs = {}
    for fold in (True, False):
        monkeypatch.setattr(target_module.TargetTracker, "fold", fold)
        passes.clear()
        lm = sharp_tiny()
        result = train(lm, COMPONENTS, split, config, progress=False)
        runs[fold] = (result, snapshot(lm.model), len(passes))
    (folded, w_folded, n_folded), (separate, w_separate, n_separate) = runs[True], runs[False]
    steps = separate.target["steps"]
    assert separate.target["reached"] and 1 < steps < config.steps
    assert n_folded == 0 and n_separate == steps
    assert folded.history == separate.history and folded.target["steps"] == steps
    for (s1, v1), (s2, v2) in zip(folded.target["checks"], separate.target["checks"], strict=True):
        assert s1 == s2 and v1 == pytest.approx(v2, abs=1e-6)
    assert all(torch.equal(w_folded[n], w_separate[n]) for n in w_folded)


def test_a_run_that_hits_the_cap_measures_its_last_check_in_a_pass_of_its_own(monkeypatch):
    passes = []
    real = target_module.forget_strength
    monkeypatch.setattr(target_module, "forget_strength", lambda *a, **k: passes.append(1) or real(*a, **k))
    result = train(sharp_tiny(), COMPONENTS, golf_split(), quick(target=0.99, **{**EDIT, "steps": 4}), progress=False)
    assert not result.target["reached"] and [c[0] for c in result.target["checks"]] == [1, 2, 3, 4]
    assert passes == [1]


def test_an_overshoot_is_walked_back_into_the_band():
    """At lr 1e-3 the sharp tiny model's P(golf) jumps from below 0.6 to well above 0.65 in one
    step; with a band of 0.05 the run ends inside [0.6, 0.65], at weights on the line between
    the last two checks' weights, and the strength recorded is what the scorer measures there."""
    split = golf_split()
    fast = {**EDIT, "lr": 1e-3}
    free = train(sharp_tiny(), COMPONENTS, split, quick(target=0.6, **fast), progress=False).target
    assert free["strength"] > 0.65 and "last_stretch" not in free
    lm = sharp_tiny()
    banded = train(lm, COMPONENTS, split, quick(target=0.6, target_band=0.05, **fast), progress=False)
    record = banded.target
    assert record["steps"] == free["steps"] and record["checks"] == free["checks"]  # same run up to the overshoot
    stretch = record["last_stretch"]
    assert stretch["overshoot"] == free["strength"] and stretch["in_band"]
    assert 0 < stretch["fraction"] < 1 and stretch["search"][-1] == [stretch["fraction"], record["strength"]]
    assert 0.6 <= record["strength"] <= 0.65 and record["reached"] and record["band"] == 0.05
    _, p_new = answer_probs(lm.model, lm.tokenizer, split.forget)
    assert record["strength"] == pytest.approx(float(p_new.mean()), abs=1e-6)


def test_an_arm_inside_the_band_is_left_alone():
    split = golf_split()
    plain = train(sharp_tiny(), COMPONENTS, split, quick(target=0.6, **EDIT), progress=False)
    lm = sharp_tiny()
    banded = train(lm, COMPONENTS, split, quick(target=0.6, target_band=0.5, **EDIT), progress=False)
    assert banded.target["last_stretch"] is None
    assert {k: v for k, v in banded.target.items() if k not in ("band", "last_stretch")} == plain.target
    assert banded.history == plain.history


def test_an_unreachable_target_is_reported():
    lm = sharp_tiny()
    result = train(lm, COMPONENTS, golf_split(), quick(target=0.9, steps=5, lr=1e-9, check_every=2), progress=False)
    record = result.target
    assert not record["reached"] and record["steps"] == 5 and len(result.history) == 5
    assert [c[0] for c in record["checks"]] == [2, 4, 5]
    assert record["strength"] < 0.3


def test_unlearning_strength_is_one_minus_p_true():
    split = football_split()
    lm = sharp_tiny()
    p0, _ = answer_probs(lm.model, lm.tokenizer, split.forget)
    config = quick(objective="log1m", forget_over="answers", target=0.5, steps=12, lr=3e-5, check_every=1, **ALONE)
    record = train(lm, COMPONENTS, split, config, progress=False).target
    p1, _ = answer_probs(lm.model, lm.tokenizer, split.forget)
    assert float(p0.mean()) > 0.7 and record["reached"]
    assert record["strength"] == pytest.approx(1 - float(p1.mean()), abs=1e-6)
    assert record["checks"][0][1] < 0.5 <= record["strength"]
    assert record["measure"].startswith("1 - mean P(true)")


@pytest.mark.parametrize("fold", [True, False])
def test_a_nan_strength_stops_training_and_restores_the_weights(fold, monkeypatch):
    lm = sharp_tiny()
    before = snapshot(lm.model)
    monkeypatch.setattr(target_module.TargetTracker, "fold", fold)
    monkeypatch.setattr(target_module, "answer_probs", lambda *a, **k: (torch.tensor([math.nan]),) * 2)
    monkeypatch.setattr(target_module.TargetTracker, "strength_of", lambda *a: math.nan)
    with pytest.raises(TrainingDivergedError, match=r"step 2/12: the forget strength is nan"):
        train(lm, COMPONENTS, golf_split(), quick(target=0.6, **{**EDIT, "check_every": 2}), progress=False)
    assert all(torch.equal(p.detach(), before[n]) for n, p in lm.model.named_parameters())


def test_same_config_and_seed_give_bitwise_identical_weights():
    split = golf_split()
    runs = []
    for _ in range(2):
        lm = sharp_tiny()
        result = train(lm, "blocks.1.mlp,blocks.2.attn.q.h1", split, quick(target=0.6, seed=3, **EDIT),
                       progress=False)
        runs.append((snapshot(lm.model), result.history, result.target))
    (w1, h1, t1), (w2, h2, t2) = runs
    assert h1 == h2 and t1 == t2
    assert all(torch.equal(w1[n], w2[n]) for n in w1)


def test_sequential_blocks_each_train_to_the_target_and_the_log_keeps_each_record():
    blocks = sequential_blocks(tiny_athletes(), n_blocks=2, block_size=3, seed=0)
    lm = sharp_tiny()
    results = train_sequential(lm, "blocks.1.mlp", blocks, quick(target=0.5, steps=6, lr=3e-3, check_every=1),
                               progress=False)
    records = train_log(lm, results, "tiny")["target"]
    assert [r["steps"] for r in records] == [len(r.history) for r in results]
    assert all(r["target"] == 0.5 and r["checks"] for r in records)


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_config_refuses_non_finite_floats(name, value):
    with pytest.raises(MechunlearnError, match=rf"^{name} must be a finite number, got"):
        EditConfig(**{name: value}).validate()


def test_config_refuses_bad_targets_and_types():
    for bad, field in (({"target": 0.0}, "target"), ({"target": 1.5}, "target"), ({"target": -0.1}, "target"),
                       ({"check_every": 0}, "check_every"), ({"steps": "ten"}, "steps"),
                       ({"steps": 2.5}, "steps"), ({"lr": "1e-4"}, "lr"), ({"c_maintain": None}, "c_maintain"),
                       ({"weight_mask": "yes"}, "weight_mask"), ({"grad_accum": True}, "grad_accum"),
                       ({"target_band": 0.0}, "target_band"), ({"target_band": -0.1}, "target_band")):
        with pytest.raises(MechunlearnError, match=rf"^{field} must"):
            EditConfig(**bad).validate()
    with pytest.raises(MechunlearnError, match="write 1.0e-4"):
        EditConfig(lr="1e-4").validate()
    assert EditConfig(target=1.0, check_every=1).validate().target == 1.0
    assert EditConfig.from_json(EditConfig(target=0.9).to_json()).target == 0.9


# --- CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharp_on_disk(tmp_path_factory):
    return write_workspace(sharp_tiny(), tmp_path_factory.mktemp("target_cli"))


def _edit_args(root, out, *extra):
    return ["edit", "--model", str(root / "base"), "--dataset", "table", "--data", str(root / "facts.csv"),
            "--threshold", "0", "--forget", "4", "--general-length", "16", "--components", "blocks.1..3.mlp",
            "--out", str(out), *extra]


def _main(monkeypatch, capsys, args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mechunlearn", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def _flat(text: str) -> str:
    """The console wraps long lines at its width."""
    return " ".join(text.split())


def test_cli_warns_when_the_target_is_missed(sharp_on_disk):
    out = sharp_on_disk / "missed"
    result = CliRunner().invoke(app, _edit_args(sharp_on_disk, out, "--lr", "1e-9", "--steps", "3"))
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "target not reached" in line]
    assert len(warning) == 1 and "after 3 steps (the cap), target 0.9" in warning[0]
    assert "--steps" in warning[0] and "--lr" in warning[0]
    log = json.loads((out / "train_log.json").read_text())
    assert log["target"]["reached"] is False and log["target"]["steps"] == 3 and len(log["history"]) == 3
    assert f"is {log['target']['strength']:.3f} after" in warning[0]
    # --target 0: exactly --steps steps, no target recorded
    result = CliRunner().invoke(app, _edit_args(sharp_on_disk, sharp_on_disk / "fixed", "--target", "0",
                                                "--steps", "2"))
    assert result.exit_code == 0, result.output
    log = json.loads((sharp_on_disk / "fixed" / "train_log.json").read_text())
    assert log["target"] is None and len(log["history"]) == 2 and log["config"]["target"] is None


def test_cli_require_target_exits_2_and_writes_nothing(sharp_on_disk, monkeypatch, capsys):
    out = sharp_on_disk / "required"
    code, err = _main(monkeypatch, capsys, _edit_args(sharp_on_disk, out, "--lr", "1e-9", "--steps", "3",
                                                      "--require-target"))
    assert code == 2 and not out.exists()
    assert "target not reached" in err and "Traceback" not in err and "nothing was written" in _flat(err)
    # reached: no warning, and the log records the steps used
    result = CliRunner().invoke(app, _edit_args(sharp_on_disk, out, "--lr", "3e-3", "--steps", "20", "--target", "0.5", "--require-target",
                                                "--c-maintain", "0", "--c-general", "0"))
    assert result.exit_code == 0, result.output
    log = json.loads((out / "train_log.json").read_text())
    assert log["target"]["reached"] and log["target"]["steps"] < 20 and len(log["history"]) == log["target"]["steps"]
    assert "target not reached" not in result.output


def test_cli_nan_settings_and_nan_training_exit_2_without_output(sharp_on_disk, monkeypatch, capsys):
    out = sharp_on_disk / "nan"
    for flag in ("--c-maintain", "--c-forget", "--c-general", "--grad-clip", "--lr", "--target"):
        code, err = _main(monkeypatch, capsys, _edit_args(sharp_on_disk, out, flag, "nan"))
        assert code == 2 and "finite" in err and "Traceback" not in err, (flag, err)
        assert len(err.strip().splitlines()) == 1
    code, err = _main(monkeypatch, capsys, _edit_args(sharp_on_disk, out, "--lr", "1e30",
                                                      "--grad-clip", "0", "--steps", "4"))
    assert code == 2 and "nothing was written" in _flat(err) and "Traceback" not in err, err
    assert not out.exists()


def test_cli_lr_ladder_trains_again_at_the_rate_the_validation_carve_chooses(sharp_on_disk, monkeypatch, capsys):
    args = ("--steps", "20", "--target", "0.5", "--c-maintain", "0", "--c-general", "0")
    out = sharp_on_disk / "ladder"
    result = CliRunner().invoke(app, _edit_args(sharp_on_disk, out, "--lr", "1e-9", "--lr-ladder", "1e-9,3e-3",
                                                *args))
    assert result.exit_code == 0, result.output
    log = json.loads((out / "train_log.json").read_text())
    ladder = log["lr_ladder"]
    assert ladder["first_attempt"]["lr"] == 1e-9 and ladder["first_attempt"]["reached"] is False
    assert ladder["first_attempt"]["steps"] == 20
    trials = {t["values"]["lr"]: t for t in ladder["sweep"]["trials"]}
    assert set(trials) == {1e-9, 3e-3} and trials[3e-3]["reached"] and not trials[1e-9]["reached"]
    assert ladder["sweep"]["chosen"] == {"lr": 3e-3} and log["config"]["lr"] == 3e-3
    # trained again from the original weights: the same edit as asking for lr 3e-3 at once
    direct = sharp_on_disk / "direct"
    assert CliRunner().invoke(app, _edit_args(sharp_on_disk, direct, "--lr", "3e-3", *args)).exit_code == 0
    again = json.loads((direct / "train_log.json").read_text())
    assert log["target"] == again["target"] and log["target"]["reached"]
    assert [h["loss"] for h in log["history"]] == [h["loss"] for h in again["history"]]
    assert "lr ladder:" in _flat(result.output) and "trained again at lr 0.003" in _flat(result.output)
    assert "target not reached" not in result.output
    # a ladder that cannot help still ends in the missed-target warning; bad ladders are one line, before work
    result = CliRunner().invoke(app, _edit_args(sharp_on_disk, sharp_on_disk / "low", "--lr", "1e-9",
                                                "--lr-ladder", "1e-9", *args))
    assert result.exit_code == 0 and "target not reached" in result.output
    for bad, message in (("3e-4,x", "separated by commas"), ("0,1e-3", "positive finite"),
                         ("nan", "positive finite")):
        code, err = _main(monkeypatch, capsys, _edit_args(sharp_on_disk, sharp_on_disk / "bad", "--lr-ladder", bad))
        assert code == 2 and message in err and "Traceback" not in err
    code, err = _main(monkeypatch, capsys, _edit_args(sharp_on_disk, sharp_on_disk / "bad", "--lr-ladder", "1e-3",
                                                      "--target", "0"))
    assert code == 2 and "no target" in err
    assert not (sharp_on_disk / "bad").exists()


def test_past_the_drop_bound_the_ladder_prefers_a_rate_that_reached_the_target():
    from mechunlearn.edit.sweep import choose

    def trial(lr, drop, reached, score, steps=30):
        return {"values": {"lr": lr}, "maintain_drop": drop, "reached": reached, "forget_score": score, "steps": steps}

    # none keeps the 0.05 bound: 1e-3 reached the target, 3e-3 missed it with a smaller drop
    past = [trial(3e-4, 0.090, False, 0.82), trial(1e-3, 0.098, True, 0.90, 22), trial(3e-3, 0.068, False, 0.875)]
    assert choose(past, 0.05, with_target=True)["values"] == {"lr": 1e-3}
    assert choose(past, 0.05, with_target=False)["values"] == {"lr": 3e-3}  # no target: the smallest drop
    missed = [{**t, "reached": False} for t in past]
    assert choose(missed, 0.05, with_target=True)["values"] == {"lr": 3e-3}  # none reached: the smallest drop
    # within the bound the rule is unchanged: reached first (fewest steps), else the highest strength
    within = [trial(1e-3, 0.04, True, 0.90, 22), trial(3e-3, 0.03, True, 0.91, 12), trial(3e-4, 0.01, False, 0.95)]
    assert choose(within, 0.05, with_target=True)["values"] == {"lr": 3e-3}
    assert choose([{**t, "reached": False} for t in within], 0.05, with_target=True)["values"] == {"lr": 3e-4}
