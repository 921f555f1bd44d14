"""Inputs a careless or hostile user gives (issue 22): nothing broken is ever saved, a
localization must fit the model it trains, cheap inputs fail at once with one line, files are
not written before a refusal. The commands run in this process on tiny models."""

import json
import math
from pathlib import Path

import pytest
import torch

from mechunlearn.cli.app import invoke
from mechunlearn.edit import EditConfig, train
from mechunlearn.edit.saving import weights_hash
from mechunlearn.errors import TrainingDivergedError
from mechunlearn.facts import load_table, split_facts
from mechunlearn.localize import Localization
from mechunlearn.localize.base import _model_info
from mechunlearn.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

ANSWERS = ("football", "baseball", "basketball")
SUBJECTS = ["Ann Lee", "Bo Chan", "Cy Dunn", "Di Ezra", "Ed Fox", "Flo Gray", "Gus Hill", "Ida Ives", "Jo King",
            "Kim Lowe", "Lu Moss", "Max Nash"]
ROWS = [f"f{i},{s},Fact: {s} plays the sport of,{ANSWERS[i % 3]},golf" for i, s in enumerate(SUBJECTS)]
TABLE = "\n".join(["id,subject,prompt,target_true,target_new", *ROWS]) + "\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("careless")
    for family in ("llama", "gemma"):
        lm = tiny_model(family)
        lm.model.save_pretrained(ws / family)
        lm.tokenizer.save_pretrained(ws / family)
    (ws / "good.csv").write_text(TABLE)
    return ws


def run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = invoke([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip() and "%|" not in line]
    assert "Traceback" not in out + err
    return status, lines


def edit_args(ws, out, *extra, model="llama"):
    return ["edit", "--model", ws / model, "--device", "cpu", "--dataset", "table", "--data", ws / "good.csv",
            "--threshold", "0", "--forget", "3", "--steps", "3", "--target", "0", "--out", out, *extra]


def one_error(status, lines, *expected):
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])


# ---- 1. a diverged edit is never saved


def test_edit_whose_weights_explode_writes_nothing(ws, tmp_path, capsys):
    """On a post-normed model (Gemma 3) a huge lr leaves every loss finite while the trained
    weights run to 1e6: refused with the step and the quantity, nothing written (was: saved)."""
    out = tmp_path / "edit"
    status, lines = run(edit_args(ws, out, "--components", "blocks.1.mlp", "--lr", "1e6", model="gemma"), capsys)
    one_error(status, lines, "step 1/3", "diverged", "|w| = ", "nothing was written")
    assert not out.exists()


def test_train_restores_the_weights_when_they_explode():
    lm = tiny_model("gemma")
    split = split_facts(load_table_from_text(TABLE), forget=3, seed=0)
    before = weights_hash(lm.model)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        train(lm, "blocks.1.mlp", split, EditConfig(steps=3, lr=1e6), progress=False)
    assert weights_hash(lm.model) == before


def test_train_refuses_nan_outputs_after_the_last_step(monkeypatch):
    """Without a target no check measures the final weights: a last step that leaves the outputs
    NaN is caught by one pass over the forget prompts (was: returned as a success)."""
    import mechunlearn.edit.trainer as trainer

    lm = tiny_model("llama")
    split = split_facts(load_table_from_text(TABLE), forget=3, seed=0)
    real_after_step = trainer.TrainableWeights.after_step

    def poison(self):
        real_after_step(self)
        with torch.no_grad():
            self.model.get_output_embeddings().weight[0, 0] = float("nan")  # not a trained weight

    monkeypatch.setattr(trainer.TrainableWeights, "after_step", poison)
    with pytest.raises(TrainingDivergedError, match="NaN"):
        train(lm, "blocks.1.mlp", split, EditConfig(steps=1, c_general=0, c_maintain=0), progress=False)


def load_table_from_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "facts.csv"
        path.write_text(text)
        return load_table(path)


# ---- 2. a localization must fit the model it trains


def _loc(path: Path, scores: dict, model: dict | None) -> Path:
    evidence = {"granularity": "matrix", **({"model": model} if model else {})}
    Localization("causal_tracing", {}, ["f0"], scores, evidence, "tiny", []).save(path)
    return path


def test_localization_of_another_architecture_is_refused_naming_both(ws, tmp_path, capsys):
    info = {**_model_info(tiny_model("gemma2")), "n_layers": 26}
    loc = _loc(tmp_path / "gemma2.json", {"blocks.1.mlp.out": 2.0, "blocks.2.mlp.out": 1.0}, info)
    status, lines = run(edit_args(ws, tmp_path / "e", "--localization", loc, "--budget", "8192"), capsys)
    one_error(status, lines, "gemma2.json", "gemma2 (26 layers", "llama (4 layers", "--force")
    assert not (tmp_path / "e").exists()
    status, lines = run(edit_args(ws, tmp_path / "e", "--localization", loc, "--budget", "8192", "--force"), capsys)
    assert status == 0 and any("warning (--force)" in line for line in lines), lines
    assert json.loads((tmp_path / "e" / "train_log.json").read_text())["components"] == ["blocks.1.mlp.out"]


def test_localization_of_other_weights_is_refused(ws, tmp_path, capsys):
    loc = _loc(tmp_path / "seed1.json", {"blocks.1.mlp.out": 2.0}, _model_info(tiny_model("llama", seed=1)))
    status, lines = run(edit_args(ws, tmp_path / "e", "--localization", loc, "--budget", "8192"), capsys)
    one_error(status, lines, "seed1.json", "other weights", "--force")


def test_localization_records_its_model_and_a_selection_carries_it():
    from mechunlearn.localize import localize, select

    lm = tiny_model("llama")
    loc = localize(lm, load_table_from_text(TABLE).subset(list(load_table_from_text(TABLE))[:2]), "random")
    model = loc.evidence["model"]
    assert model["n_layers"] == 4 and model["weights_sha256"] == weights_hash(lm.model)
    assert select(loc, lm.arch, budget=8192).model == model


def test_localization_with_nan_scores_is_refused(ws, tmp_path, capsys):
    loc = _loc(tmp_path / "nan.json", {"blocks.1.mlp.out": math.nan, "blocks.2.mlp.out": math.nan}, None)
    status, lines = run(edit_args(ws, tmp_path / "e", "--localization", loc, "--budget", "8192"), capsys)
    one_error(status, lines, "nan.json", "2 of 2 scores are not finite")


# ---- 6. files written before a refusal, and paths that break later


def test_demo_refuses_a_folder_of_the_users_files(tmp_path, capsys, monkeypatch):
    from mechunlearn.experiment import Experiment

    started = []
    monkeypatch.setattr(Experiment, "run", lambda self: started.append(self.out))
    (tmp_path / "notes.txt").write_text("mine")
    status, lines = run(["demo", "--quick", "--out", tmp_path], capsys)
    one_error(status, lines, str(tmp_path), "not empty")
    assert not started and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # an earlier run: resumed
    assert run(["demo", "--quick", "--out", tmp_path / "run"], capsys)[0] == 0 and started == [tmp_path / "run"]


def test_edit_out_where_no_folder_can_be_made_is_refused_before_training(ws, tmp_path, capsys, monkeypatch):
    import mechunlearn.edit.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("trained before refusing --out"))
    status, lines = run(edit_args(ws, "/proc/x", "--components", "blocks.1.mlp"), capsys)
    one_error(status, lines, "/proc/x", "cannot create a folder in /proc")


def test_train_log_paths_work_from_any_folder(ws, tmp_path, capsys, monkeypatch):
    """``--data`` and ``--model`` typed relative to the working folder are recorded resolved
    (absolute), so ``evaluate --forget-from`` reads the log from anywhere."""
    monkeypatch.chdir(ws)
    status, _ = run(["edit", "--model", "llama", "--device", "cpu", "--dataset", "table", "--data", "good.csv",
                     "--threshold", "0", "--forget", "3", "--steps", "1", "--target", "0", "--components",
                     "blocks.1.mlp", "--out", tmp_path / "e"], capsys)
    assert status == 0
    log = json.loads((tmp_path / "e" / "train_log.json").read_text())
    assert log["facts"]["data"] == str(ws / "good.csv") and log["model"] == str(ws / "llama")
    monkeypatch.chdir(tmp_path)
    status, lines = run(["evaluate", "--model", "e/model", "--forget-from", "e/train_log.json", "--device", "cpu",
                         "--formats", "train", "--attacks", "", "--out", "eval.json"], capsys)
    assert status == 0, lines


# ---- 7. Ctrl-C


def test_interrupted_run_says_what_was_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    from mechunlearn.experiment import Experiment

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Experiment, "run", interrupted)
    status, lines = run(["demo", "--quick", "--out", tmp_path / "d"], capsys)
    assert status == 130 and len(lines) == 1, lines
    assert lines[0].startswith("interrupted: ") and f"kept in {tmp_path / 'd'}" in lines[0] and "resumes" in lines[0]


# ---- 4, 5. cheap inputs that crashed or misled, values that meant nothing: one line, at once


def _more_files(ws: Path) -> None:
    cf = "subject,prompt,target_true,target_false,paraphrase_prompts\n"
    rows = [f'{s},{s} plays,{ANSWERS[i % 3]},golf,"[\'{s} is a player of\']"' for i, s in enumerate(SUBJECTS)]
    (ws / "cf_escape.csv").write_text(cf + "\n".join([*rows[:2], rows[2].replace("player", "pl\\Nayer"), *rows[3:]]))
    (ws / "cf_unclosed.csv").write_text(cf + "\n".join([*rows[:3], rows[3].replace("']", "'"), *rows[4:]]))
    same = [f"f{i},{s},Fact: {s} plays the sport of,{ANSWERS[i % 3]},{ANSWERS[i % 3]}" for i, s in enumerate(SUBJECTS)]
    (ws / "same_targets.csv").write_text("id,subject,prompt,target_true,target_new\n" + "\n".join(same) + "\n")
    long = [f"f{i},{s},{s} is known for,the long and winding road number {i},golf" for i, s in enumerate(SUBJECTS)]
    (ws / "long_answers.csv").write_text("id,subject,prompt,target_true,target_new\n" + "\n".join(long) + "\n")
    if not (ws / "mamba").exists():
        import shutil

        shutil.copytree(ws / "llama", ws / "mamba")
        config = json.loads((ws / "mamba" / "config.json").read_text())
        (ws / "mamba" / "config.json").write_text(json.dumps({**config, "model_type": "mamba9"}))


def KNOWN(ws, data, *extra, dataset="table"):
    return ["facts", "known", "--model", ws / "llama", "--device", "cpu", "--dataset", dataset, "--data", ws / data,
            "--out", ws / "k.csv", *extra]


def EDIT(ws, *extra):
    return [*edit_args(ws, ws / "new_edit", "--components", "blocks.1.mlp"), *extra]


CHEAP = [
    ("counterfact-list-escape", lambda ws: KNOWN(ws, "cf_escape.csv", dataset="counterfact"),
     ["cf_escape.csv", "line 4", "'paraphrase_prompts'", "cannot read"]),
    ("counterfact-list-never-closes", lambda ws: KNOWN(ws, "cf_unclosed.csv", dataset="counterfact"),
     ["cf_unclosed.csv", "line 5", "never closes"]),
    ("seed-above-64-bits", lambda ws: EDIT(ws, "--seed", str(2**64 + 1)), ["--seed", "4294967295"]),
    ("seed-negative-evaluate", lambda ws: ["evaluate", "--seed", "-1", "--out", ws / "e.json"], ["--seed"]),
    ("targets-equal", lambda ws: [*EDIT(ws), "--data", ws / "same_targets.csv"],
     ["knows 12 of the 12", "share their first token"]),
    ("answers-of-many-words-none-known", lambda ws: [*EDIT(ws), "--data", ws / "long_answers.csv", "--threshold",
                                                     "0.99"], ["knows none", "scored by their first token"]),
    ("model-type-unknown", lambda ws: EDIT(ws, "--model", ws / "mamba"), ["'mamba9'", "supported: llama"]),
    ("model-empty", lambda ws: EDIT(ws, "--model", ""), ["--model", "empty"]),
    ("steps-absurd", lambda ws: EDIT(ws, "--steps", str(10**12)), ["steps", "1,000,000"]),
    ("target-band-absurd", lambda ws: EDIT(ws, "--target", "0.9", "--target-band", "1e12"), ["target_band", "(0, 1)"]),
    ("target-band-without-target", lambda ws: EDIT(ws, "--target-band", "0.05"), ["--target-band", "--target 0"]),
    ("c-maintain-absurd", lambda ws: EDIT(ws, "--c-maintain", "1e12"), ["c_maintain", "1e+12"]),
    ("every-loss-weight-0", lambda ws: EDIT(ws, "--c-forget", "0", "--c-maintain", "0", "--c-general", "0"),
     ["all 0", "loss is zero"]),
    ("mmlu-limit-negative", lambda ws: ["evaluate", "--mmlu-limit", "-1", "--out", ws / "e.json"], ["--mmlu-limit"]),
    ("formats-empty-list", lambda ws: ["evaluate", "--formats", ",", "--out", ws / "e.json"], ["--formats", "no format"]),
    ("device-map-unknown", lambda ws: EDIT(ws, "--device-map", "sideways"), ["--device-map", "'sideways'", "auto"]),
]


@pytest.mark.parametrize("case", CHEAP, ids=[c[0] for c in CHEAP])
def test_cheap_bad_input_is_one_clear_line(case, ws, capsys, monkeypatch):
    import mechunlearn.edit.pipeline as pipeline

    name, argv, expected = case
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    _more_files(ws)
    before = sorted(p.name for p in ws.iterdir())
    status, lines = run(argv(ws), capsys)
    one_error(status, lines, *expected)
    assert "transformers" not in lines[0]
    assert sorted(p.name for p in ws.iterdir()) == before


# ---- 3. every config error before any work; the runner's failed cells and known-facts checkpoint


CONFIGS = [
    ("param-misspelled", "localization:\n  params:\n    fact_lookup:\n      relativ: 0.5\n",
     ["localization.params.fact_lookup.relativ", "did you mean 'relative'"]),
    ("threshold-above-1", "facts:\n  threshold: 1.5\n", ["facts.threshold", "1.5"]),
    ("limit-negative", "facts:\n  limit: -5\n", ["facts.limit", "-5"]),
    ("setting-threshold", "settings:\n  - name: a\n    facts: {threshold: -0.1}\n", ["settings[0].facts.threshold"]),
    ("duplicate-key", "seeds: [0]\nmodel: default\nseeds: [1]\n", ["'seeds' is given twice", "line 1"]),
    ("empty-file", "", ["is empty"]),
    ("seed-too-large", f"seeds: [{2**40}]\n", ["seeds[0]"]),
]


@pytest.mark.parametrize("case", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_config_errors_are_refused_when_read(case, tmp_path):
    from mechunlearn.experiment import load_config
    from mechunlearn.experiment.schema import ConfigError

    _, text, expected = case
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    for part in expected:
        assert part in str(e.value), str(e.value)


def _run_config(ws, **setting):
    from mechunlearn.experiment.config import from_dict

    return from_dict({"model": str(ws / "llama"), "device": "cpu",
                      "facts": {"dataset": "table", "data": str(ws / "good.csv"), "threshold": 0.0},
                      "localization": {"methods": ["random"], "n_facts": 2, "probe_facts": 0,
                                       "budget": {"match": None, "params": 8192}},
                      "settings": [{"name": "s", "forget": 3, **setting}],
                      "evaluation": {"formats": ["train"], "attacks": []}})


@pytest.mark.parametrize("setting,expected", [({"category": "chess"}, ["'chess'", "football"]),
                                              ({"forget": 10**12}, ["forget 1000000000000", "12 facts"])])
def test_run_refuses_what_the_data_cannot_give_before_any_model_work(ws, tmp_path, monkeypatch, setting, expected):
    import mechunlearn.experiment.runner as runner
    from mechunlearn.experiment import Experiment
    from mechunlearn.experiment.schema import ConfigError

    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    monkeypatch.setattr(runner, "filter_known", lambda *a, **k: pytest.fail("scored the facts"))
    with pytest.raises(ConfigError) as e:
        Experiment(_run_config(ws, **setting), tmp_path / "run").run()
    assert all(part in str(e.value) for part in expected), str(e.value)
    assert not (tmp_path / "run").exists()


def test_known_facts_scoring_is_kept_in_the_run_folder(ws, tmp_path, monkeypatch):
    import mechunlearn.experiment.runner as runner
    from mechunlearn.experiment import Experiment

    config = _run_config(ws)
    first = Experiment(config, tmp_path / "run").known_facts(config.settings[0])
    assert len(list((tmp_path / "run" / "known").glob("*.json"))) == 1
    monkeypatch.setattr(runner, "filter_known", lambda *a, **k: pytest.fail("scored the facts again"))
    again = Experiment(config, tmp_path / "run").known_facts(config.settings[0])
    assert [f.id for f in again[0]] == [f.id for f in first[0]] and again[1] == first[1]


@pytest.mark.parametrize("stop", [False, True])
def test_a_diverged_cell_is_named_and_set_aside(ws, tmp_path, monkeypatch, stop):
    from mechunlearn.errors import MechunlearnError
    from mechunlearn.experiment import Experiment

    def diverge(self, setting, method, *rest):
        raise TrainingDivergedError(f"step 2/10: the forget loss is nan ({method})")

    monkeypatch.setattr(Experiment, "run_cell", diverge)
    experiment = Experiment(_run_config(ws), tmp_path / "run")
    experiment.stop_on_failure = stop
    with pytest.raises(MechunlearnError) as e:
        experiment.run()
    failed = sorted(p.name for p in (tmp_path / "run" / "failed").glob("*.json"))
    assert failed == (["s__unedited__s0.json"] if stop else ["s__random__s0.json", "s__unedited__s0.json"])
    assert "s__unedited__s0" in str(e.value) and "forget loss is nan" in str(e.value)
    assert not list((tmp_path / "run" / "cells").glob("*.json"))


# ---- values that nothing reads are accepted with a warning


def test_values_that_nothing_reads_are_named_and_meaningful_ones_are_not():
    assert EditConfig(mask_l1=0.1, mask_threshold=0.5, target_band=0.1).inert() == [
        "mask_l1 0.1 has no effect without weight_mask", "mask_threshold 0.5 has no effect without weight_mask",
        "target_band 0.1 has no effect without a target"]
    assert EditConfig(target=0.9, steps=5, check_every=7).inert() == [
        "check_every 7 is not below steps 5: the target is checked only after the last step, so training never "
        "stops early"]
    for used in (EditConfig(weight_mask=True, mask_l1=0.1, mask_threshold=0.5), EditConfig(target=0.9, steps=1),
                 EditConfig(target=0.9, target_band=0.05, steps=5, check_every=4), EditConfig()):
        assert used.inert() == []


def test_edit_and_run_warn_of_a_value_that_nothing_reads(ws, tmp_path, capsys):
    status, lines = run(edit_args(ws, tmp_path / "e", "--components", "blocks.1.mlp", "--mask-l1", "0.1", "--dry-run"), capsys)
    assert status == 0 and "warning: mask_l1 0.1 has no effect without weight_mask" in lines
    (tmp_path / "c.yaml").write_text("training:\n  default: {mask_threshold: 0.5}\nsettings:\n"
                                     "  - {name: a, forget: 3}\n  - {name: b, forget: 3, training: {mask_threshold: 0.7}}\n")
    status, lines = run(["run", tmp_path / "c.yaml", "--out", tmp_path / "r", "--dry-run"], capsys)
    assert status == 0
    assert [line for line in lines if line.startswith("warning")] == [
        "warning: setting 'a': mask_threshold 0.5 has no effect without weight_mask",
        "warning: setting 'b': mask_threshold 0.7 has no effect without weight_mask"]
    status, lines = run(["run", tmp_path / "c.yaml", "--out", tmp_path / "r", "--settings", "b", "--dry-run"], capsys)
    assert status == 0 and [line for line in lines if line.startswith("warning")] == [
        "warning: setting 'b': mask_threshold 0.7 has no effect without weight_mask"]  # not of a setting left out
    assert not (tmp_path / "r").exists()
