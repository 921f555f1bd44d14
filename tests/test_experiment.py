"""The runner: a grid of cells written atomically; a killed run resumes without losing or
doubling anything."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment import Experiment, SettingSpec, load_config
from mechunlearn.models.tiny import tiny_model

SPORTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sports.csv"


def _config(tiny_dir, tmp_path, seeds=(0,), data=None):
    cfg = {
        "model": str(tiny_dir),
        "seeds": list(seeds),
        "facts": {"dataset": "sports", "data": str(data) if data else None, "threshold": 0.0, "limit": 80},
        "localization": {"n_facts": 8, "methods": ["all_mlps", "random"],
                         "budget": {"match": None, "params": 20000, "rule": "under", "exempt": ["all_mlps"]}},
        "settings": [{"name": "edit4", "objective": "edit", "forget": 4}],
        # the tiny model misses the default target in 2 steps: no ladder (its own tests turn it on)
        "training": {"lr_ladder": None, "default": {"steps": 2, "forget_batch_size": 4, "maintain_batch_size": 4,
                                                    "general_batch_size": 1, "general_length": 16}},
        "evaluation": {"formats": ["train", "mcq"], "attacks": ["relearn", "probe"],
                       "config": {"lm_windows": 2, "lm_window_length": 16,
                                  "relearn": {"steps": 2, "eval_every": 1, "rank": 4, "n_maintain": 2,
                                              "general_length": 16}}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings: [{name: a}, {name: a}]\n")
    with pytest.raises(MechunlearnError, match="unique"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(MechunlearnError, match="mapping"):
        load_config(bad)


def test_unknown_training_option_is_an_error(tiny_dir, tmp_path):
    with pytest.raises(MechunlearnError, match="'training.default.learning_rate' is unknown"):
        load_config(_config(tiny_dir, tmp_path), {"training": {"default": {"learning_rate": 1.0}}})


def test_grid_runs_with_equal_budgets_and_a_report(tiny_dir, tmp_path):
    out = tmp_path / "run"
    one_mlp = 3 * 64 * 128
    source = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tiny_dir.iterdir()}
    Experiment(load_config(_config(tiny_dir, tmp_path), {"localization": {
        "methods": ["all_mlps", "random", "random_mlps"],
        "budget": {"params": one_mlp, "rule": "closest"}}}), out).run()
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.method) == ["all_mlps", "random", "random_mlps", "unedited"]
    budgets = table.set_index("method").n_params
    assert budgets["unedited"] == 0
    assert budgets["all_mlps"] == 4 * one_mlp  # exempt from the budget: every MLP matrix
    assert budgets["random_mlps"] == one_mlp  # whole MLP layers: exactly one
    assert abs(budgets["random"] - one_mlp) <= 4096  # whole matrices: the closest prefix of its ranking
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tiny_dir.iterdir()} == source
    assert (out / "report.html").exists() and (out / "data.json").exists()
    assert ("Relearning attack: lora rank 4, 2 steps at lr 0.0002, 1 fold(s) on seeded halves of the 4 edited facts."
            in (out / "report.html").read_text())  # how the attack ran, without its seed
    assert re.search(r"Probe: (logistic regression over the answers \(C 1\)|a ridge map to the answer embeddings "
                     r"\(true answer or edit target\)) on each layer&#x27;s residual, trained on .+?; headline: mean "
                     r"over the upper half of the 4 layers", (out / "report.html").read_text())
    edited = table.set_index("method").loc["all_mlps"]
    assert edited["edit.train.p_new"] != table.set_index("method").loc["unedited"]["edit.train.p_new"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.json"))}


KILL_AT = Path(__file__).with_name("kill_at.py")


@pytest.mark.skipif(not SPORTS.exists(), reason="../shared/data not present")
def test_run_killed_at_three_points_resumes_to_the_uninterrupted_results(tiny_dir, tmp_path):
    config = _config(tiny_dir, tmp_path, seeds=(0, 1), data=SPORTS)
    out, cells = tmp_path / "run", tmp_path / "run" / "cells"
    args = ["run", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def killed_at(point: str, nth: int) -> None:
        done = subprocess.run([sys.executable, str(KILL_AT), point, str(nth), *args], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    killed_at("cell", 3)  # inside the 3rd cell: 2 finished
    assert len(_digest(cells)) == 2
    before = _digest(cells)
    killed_at("cell-file", 2)  # the resumed run dies writing its 2nd cell: 3 finished, half a cell in a temp file
    finished = _digest(cells)
    assert len(finished) == 3 and all(finished[name] == digest for name, digest in before.items())
    halves = [p for p in cells.iterdir() if p.name.endswith(".tmp")]
    assert len(halves) == 1 and halves[0].name.startswith("edit4__")
    killed_at("report", 1)  # every cell done; dies while the report writes verdicts.json
    assert len(_digest(cells)) == 6 and (out / "results.csv").exists() and not (out / "report.html").exists()
    assert any(p.name.startswith("verdicts.json.") for p in out.iterdir())

    # a cell truncated by something other than the runner's writer (a copy, a full disk) is named and recomputed
    (cells / "edit4__random__s1.json").write_text('{"setting": "edit4", "met')
    done = subprocess.run([sys.executable, "-m", "mechunlearn", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "edit4__random__s1.jsoncannotberead" in "".join(done.stderr.split())
    assert (out / "report.html").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # the killed writers' temp files are gone
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and not table.duplicated(["setting", "method", "seed"]).any()

    whole = tmp_path / "uninterrupted"
    done = subprocess.run([sys.executable, "-m", "mechunlearn", *args[:-1], str(whole)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "results.csv").read_text() == (whole / "results.csv").read_text()
    assert (out / "verdicts.json").read_text() == (whole / "verdicts.json").read_text()


def test_sweep_picks_by_its_rule_and_records_trials(tiny_dir, tmp_path):
    cfg = load_config(_config(tiny_dir, tmp_path), {
        "localization": {"methods": ["all_mlps"]}, "evaluation": {"attacks": []},
        "training": {"target": None, "sweep": {"lr": [1e-6, 1e-2], "max_maintain_drop": 1.0}}})
    out = tmp_path / "run"
    Experiment(cfg, out).run()
    cell = __import__("json").loads((out / "cells" / "edit4__all_mlps__s0.json").read_text())
    sweep = cell["train"]["sweep"]
    assert [t["values"]["lr"] for t in sweep["trials"]] == [1e-6, 1e-2]
    best = max(sweep["trials"], key=lambda t: t["forget_score"])
    assert sweep["chosen"] == best["values"] and cell["train"]["config"]["lr"] == best["values"]["lr"]
    assert best["values"]["lr"] == 1e-2  # a tiny lr barely moves the edit target
    assert sweep["trials"][1]["forget_score"] > sweep["trials"][0]["forget_score"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """A tiny model whose unembedding is scaled up so that an edit can make it confident."""
    import torch

    folder = tmp_path_factory.mktemp("sharp-llama")
    lm = tiny_model("llama", n_layers=4)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(30)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_an_arm_that_misses_the_target_climbs_the_lr_ladder_chosen_on_validation_facts(sharp_dir, tmp_path):
    """At lr 1e-6 the edit stays far from the target: the arm is trained again at the ladder's lr
    chosen on the validation carve (no evaluated fact among it), which reaches it; the first
    attempt, the trials and the rule are recorded and reported. An arm that reaches the target at
    its lr does not climb."""
    def run(name, lr):
        cfg = load_config(_config(sharp_dir, tmp_path), {
            "localization": {"methods": ["all_mlps"]}, "evaluation": {"attacks": []},
            "training": {"target": 0.4, "lr_ladder": [1e-5, 1e-3],
                         "default": {"steps": 10, "lr": lr, "check_every": 1}}})
        Experiment(cfg, tmp_path / name).run()
        return json.loads((tmp_path / name / "cells" / "edit4__all_mlps__s0.json").read_text())

    cell = run("low", 1e-6)
    climbed = cell["train"]
    first, sweep, final = climbed["first_attempt"], climbed["sweep"], climbed["target"][0]
    assert first["lr"] == 1e-6 and not first["reached"] and first["steps"] == 10
    trials = sweep["trials"]
    assert [t["values"]["lr"] for t in trials] == [1e-5, 1e-3] and all(t["reached"] for t in trials)
    best = min(trials, key=lambda t: (t["steps"], t["maintain_drop"]))  # the rule: fewest steps, then smallest drop
    assert sweep["chosen"] == best["values"] == {"lr": 1e-3}
    assert climbed["config"]["lr"] == 1e-3 and final["reached"] and final["strength"] >= 0.4
    split = cell["evaluation"]["split"]
    evaluated = {i for k in ("forget", "forget_eval", "maintain_test") for i in split[k]}
    carve = {i for ids in sweep["carve"].values() for i in ids}
    assert len(evaluated) >= 8 and len(carve) >= 8 and not evaluated & carve
    html = (tmp_path / "low" / "report.html").read_text()
    assert "chosen on the validation carve" in html and "after 10 steps at lr 1e-06" in html

    direct = run("high", 1e-3)["train"]
    assert "first_attempt" not in direct and "sweep" not in direct and direct["target"][0]["reached"]
    assert "lr_rule" in direct and direct["config"]["lr"] == 1e-3


def test_a_sequential_arm_climbs_the_ladder_and_takes_the_sweep(sharp_dir, tmp_path):
    """Sequential blocks share one maintain split: the ladder (and a sweep) choose on its carve, and
    an arm with a block that missed trains every block again, from the original weights, at the
    chosen lr. Before, a sequential setting ignored both silently."""
    seq = {"name": "seq", "objective": "edit", "forget": 3, "blocks": 2, "localize": "once"}

    def run(name, training):
        cfg = load_config(_config(sharp_dir, tmp_path), {
            "localization": {"methods": ["all_mlps"]}, "evaluation": {"attacks": []}, "settings": [seq],
            "training": {"default": {"steps": 10, "lr": 1e-6, "check_every": 1}, **training}})
        Experiment(cfg, tmp_path / name).run()
        return json.loads((tmp_path / name / "cells" / "seq__all_mlps__s0.json").read_text())

    climbed = run("ladder", {"target": 0.4, "lr_ladder": [1e-5, 1e-3]})["train"]
    first, final = climbed["first_attempt"], climbed["target"]
    assert first["lr"] == 1e-6 and first["missed_blocks"] == [1, 2] and first["steps"] == 20
    assert [t["values"]["lr"] for t in climbed["sweep"]["trials"]] == [1e-5, 1e-3]
    assert climbed["sweep"]["chosen"] == {"lr": 1e-3} and climbed["config"]["lr"] == 1e-3
    assert len(final) == 2 and all(t["reached"] and t["strength"] >= 0.4 for t in final)
    assert len(climbed["history"]) == 2 and all(len(h) <= 10 for h in climbed["history"])
    html = (tmp_path / "ladder" / "report.html").read_text()
    assert "after 20 steps at lr 1e-06 (missed in block 1, 2)" in html

    swept = run("sweep", {"target": None, "sweep": {"lr": [1e-6, 1e-2], "max_maintain_drop": 1.0}})
    sweep, split = swept["train"]["sweep"], swept["evaluation"]["split"]
    assert sweep["chosen"] == {"lr": 1e-2} and swept["train"]["config"]["lr"] == 1e-2
    assert len(sweep["carve"]["forget"]) == 3  # one block-sized trial edit
    evaluated = {i for k in ("forget", "forget_eval", "maintain_test") for i in split[k]}
    assert len(evaluated) >= 6 and not evaluated & {i for ids in sweep["carve"].values() for i in ids}


SHARED = SPORTS.parent


@pytest.mark.skipif(not (SHARED / "counterfact_gemma-7b.csv").exists(), reason="../shared/data not present")
def test_the_paper_grid_runs_every_setting(tiny_dir, tmp_path):
    """The packaged paper config's settings as they ship (sport edits, a sport to golf,
    unlearning, CounterFact edits and sequential blocks), shrunk only in model, steps and
    methods."""
    small = {"steps": 2, "forget_batch_size": 8, "maintain_batch_size": 8, "general_batch_size": 1,
             "general_length": 16}
    cfg = load_config("paper", overrides={
        "model": str(tiny_dir), "seeds": [0], "data_dir": str(SHARED),
        "facts": {"data": "sports.csv", "threshold": 0.0, "limit": 200},
        "localization": {"n_facts": 8, "probe_facts": 16, "methods": ["random", "all_mlps"],
                         "budget": {"match": None, "params": 20000, "rule": "under"}},
        "training": {"default": small, "sweep": None, "lr_ladder": None},
        "evaluation": {"attacks": ["relearn", "probe"],
                       "config": {"lm_windows": 2, "lm_window_length": 16,
                                  "relearn": {"steps": 1, "eval_every": 1, "rank": 4, "n_maintain": 2,
                                              "general_length": 16}}},
    })
    out = tmp_path / "run"
    Experiment(cfg, out).run()
    table = pd.read_csv(out / "results.csv")
    names = ["edit16", "edit64", "basketball_to_golf", "unlearn16", "counterfact16", "counterfact64",
             "counterfact_sequential"]
    assert sorted(table.setting.unique()) == sorted(names)
    assert len(table) == len(names) * 3 and not table.duplicated(["setting", "method", "seed"]).any()

    def cell(setting, method="random"):
        return json.loads((out / "cells" / f"{setting}__{method}__s0.json").read_text())

    splits = json.loads((out / "data.json").read_text())["splits"]
    assert splits["edit64"]["0"]["forget"] == 64
    golf = cell("basketball_to_golf")["evaluation"]["split"]
    assert golf["forget_eval"] and not set(golf["forget"]) & set(golf["forget_eval"])  # evaluated on the other half
    assert abs(len(golf["forget"]) - len(golf["forget_eval"])) <= 1
    assert set(golf["targets"].values()) == {" golf"}
    assert {r["id"] for r in cell("basketball_to_golf")["evaluation"]["forget"]["rows"]} == set(golf["forget_eval"])
    assert cell("unlearn16")["objective"] == "log1m" and cell("unlearn16")["train"]["config"]["objective"] == "log1m"
    cf = cell("counterfact16")
    assert 0 < cf["metrics"]["edit.paraphrase.p_new"] < 1 and 0 < cf["metrics"]["neighborhood.p_true"] < 1
    assert cf["metrics"]["forget.paraphrase.n"] == 16
    assert len(cell("counterfact_sequential")["train"]["history"]) == 4  # four blocks, one after another
    assert splits["counterfact_sequential"]["0"]["forget"] == 64
    # CounterFact settings localize on their own facts, sports ones share one localization
    locs = sorted(p.name for p in (out / "localizations").glob("*random__s0.json"))
    assert locs == ["counterfact16__random__s0.json", "counterfact64__random__s0.json",
                    "counterfact_sequential__random__s0.json", "random__s0.json"]


def test_missing_data_files_fail_before_any_work(tiny_dir, tmp_path):
    cfg = load_config("paper", overrides={"model": str(tiny_dir)})
    with pytest.raises(MechunlearnError, match="counterfact16.*data_dir"):
        Experiment(cfg, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_cli_overrides_and_setting_filter(tmp_path):
    from mechunlearn.experiment import only_settings, parse_overrides

    over = load_config("paper", parse_overrides(["seeds=[0, 1]", "facts.limit=50", "facts.data=x.csv"]))
    assert over.seeds == (0, 1) and over.facts.limit == 50 and over.facts.data == "x.csv"
    # a mapping replaces the config's mapping: {} empties it, where merging would change nothing
    variants = tmp_path / "variants.yaml"
    variants.write_text("localization: {variants: {span: {span: true}}}\ntraining: {default: {steps: 7, lr: 0.01}}\n")
    assert load_config(variants).localization.variants
    cleared = load_config(variants, parse_overrides(["localization.variants={}", "training.default={steps: 5}"]))
    assert not cleared.localization.variants and cleared.training.default == {"steps": 5}
    assert load_config(variants, parse_overrides(["training.default.steps=5"])).training.default == {"steps": 5,
                                                                                                     "lr": 0.01}
    with pytest.raises(MechunlearnError, match="conflicts"):
        parse_overrides(["facts={limit: 5}", "facts.data=x.csv"])
    with pytest.raises(MechunlearnError, match="KEY=VALUE"):
        parse_overrides(["seeds"])
    cfg = load_config("paper")
    assert [s.name for s in only_settings(cfg, ["unlearn16", "edit16"]).settings] == ["edit16", "unlearn16"]
    with pytest.raises(MechunlearnError, match="nope"):
        only_settings(cfg, ["nope"])
    with pytest.raises(MechunlearnError, match="packaged configs: demo, paper, quick"):
        load_config(tmp_path / "absent.yaml")
    own = SettingSpec("x", evaluation={"formats": ["train"], "config": {"lm_windows": 3}})
    assert cfg.evaluation_for(own).formats == ["train"] and cfg.evaluation_for(own).attacks == cfg.evaluation.attacks
    assert cfg.eval_config(own, 0).lm_windows == 3 and cfg.eval_config(SettingSpec("y"), 0).lm_windows == 16


def test_cli_run_names_a_packaged_config_and_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mechunlearn", "run", "paper", "--settings", "counterfact16",
           "--set", f"data_dir={tmp_path / 'nowhere'}", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "counterfact16" in done.stderr and "no such data file" in done.stderr
    assert not out.exists()


def test_a_setting_the_facts_cannot_fill_is_skipped_and_reported(tiny_dir, tmp_path):
    settings = [{"name": "edit4", "objective": "edit", "forget": 4},
                {"name": "too_many", "objective": "edit", "forget": 79}]  # < the data's 80 facts (else refused at once)
    cfg = load_config(_config(tiny_dir, tmp_path), {"localization": {"methods": ["all_mlps"]},
                                                     "evaluation": {"attacks": []}, "settings": settings})
    out = tmp_path / "run"
    # 80 known facts, 8 of them set aside for localization
    with pytest.raises(MechunlearnError, match="too_many: asked to forget 79 of only 72"):
        Experiment(cfg, out).run()
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == ["edit4__all_mlps__s0.json", "edit4__unedited__s0.json"]
    assert "too_many" in json.loads((out / "data.json").read_text())["skipped"]
    assert "Setting too_many was skipped: asked to forget 79" in (out / "report.html").read_text()


def test_known_facts_are_filtered_with_the_unedited_model(tiny_dir, tmp_path, monkeypatch):
    """A later setting's known-fact filter must not see the previous cell's edited weights."""
    import mechunlearn.experiment.runner as experiment

    settings = [{"name": "edit4", "objective": "edit", "forget": 4},
                {"name": "later", "objective": "edit", "forget": 4, "facts": {"limit": 60}}]
    cfg = load_config(_config(tiny_dir, tmp_path), {
        "localization": {"methods": ["all_mlps"]}, "evaluation": {"attacks": []}, "settings": settings,
        "training": {"target": None, "default": {"lr": 0.1}}})
    seen = []
    real = experiment.filter_known

    def spy(model, *args, **kwargs):
        seen.append(sum(float(p.detach().double().abs().sum()) for p in model.parameters()))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(experiment, "filter_known", spy)
    Experiment(cfg, tmp_path / "run").run()
    assert len(seen) == 2 and seen[0] == seen[1]  # the second filter ran after an lr-0.1 edit


def test_a_misspelled_key_fails_fast_with_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  - {name: a, objectve: log1m}\n")
    start = time.perf_counter()
    with pytest.raises(MechunlearnError, match=r"'settings\[0\]\.objectve' is unknown \(did you mean 'objective'\?\)"):
        load_config(bad)
    assert time.perf_counter() - start < 1.0
    cases = {
        "evaluation: {formatz: [train]}\n": r"'evaluation.formatz' is unknown \(did you mean 'formats'\?\)",
        "training: {default: {steps: ten}}\n": r"'training.default.steps': expected a whole number, got 'ten'",
        "seeds: []\n": "'seeds' is empty",
        "localization: {methods: [fact_lookup, magic]}\n": r"'localization.methods\[1\]' is 'magic'",
        "modle: x\n": r"'modle' is unknown \(did you mean 'model'\?\)",
        "settings: [{name: a, mode: category, category: golf, new_target: golf}]\n": "nothing to edit",
        "training: {default: {lr: .nan}}\n": r"'training.default.lr': expected a finite number",
        "settings: [{name: a\n": "not valid YAML at line",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(MechunlearnError, match=message):
            load_config(bad)


def test_packaged_configs_validate():
    from mechunlearn.experiment import packaged_configs

    assert packaged_configs() == ["demo", "paper", "quick"]
    for name in packaged_configs():
        cfg = load_config(name)
        assert cfg.training.target == 0.9 and cfg.settings
        setting = cfg.settings[0]
        assert all(cfg.edit_config(m, setting, 0).target_band == 0.05 for m in cfg.localization.methods)


def test_localization_facts_are_never_evaluated_and_sequential_blocks_relocalize(tiny_dir, tmp_path):
    settings = [{"name": "edit4", "objective": "edit", "forget": 4},
                {"name": "seq", "objective": "edit", "forget": 3, "blocks": 2}]
    cfg = load_config(_config(tiny_dir, tmp_path), {
        "localization": {"methods": ["random"], "n_facts": 6, "budget": {"match": None, "params": 20000}},
        "evaluation": {"attacks": ["relearn"]}, "settings": settings,
        "training": {"target": 0.99, "default": {"steps": 2, "check_every": 1}}})
    out = tmp_path / "run"
    Experiment(cfg, out).run()
    data = json.loads((out / "data.json").read_text())
    localization = set(data["localization_facts"]["s0"])
    assert len(localization) == 6 and "set aside before the splits" in data["localization_rule"]
    for name in ("edit4", "seq"):
        cell = json.loads((out / "cells" / f"{name}__random__s0.json").read_text())
        split = cell["evaluation"]["split"]
        evaluated = set(split["forget"]) | set(split["forget_eval"]) | set(split["maintain_test"])
        assert evaluated and not evaluated & localization
        relearn = cell["evaluation"]["attacks"]["relearn"]
        assert relearn["train_facts"] and not set(relearn["train_facts"]) & localization
        targets = cell["train"]["target"]
        assert all(t["target"] == 0.99 and t["steps"] <= 2 for t in targets)
    unedited = json.loads((out / "cells" / "edit4__unedited__s0.json").read_text())
    assert "relearn" not in unedited["evaluation"]["attacks"]  # nothing to relearn in a model that knows it
    seq = json.loads((out / "cells" / "seq__random__s0.json").read_text())["train"]
    assert seq["localize"] == "per_block" and len(seq["blocks"]) == 2 and len(seq["target"]) == 2
    assert all(b["n_params"] <= 20000 for b in seq["blocks"])


def test_the_sweep_chooses_on_facts_that_are_never_evaluated(tiny_dir, tmp_path):
    from mechunlearn.edit.sweep import validation_split
    from mechunlearn.experiment.facts import evaluated_ids, seed_facts
    from mechunlearn.facts import load_facts

    cfg = load_config(_config(tiny_dir, tmp_path))
    facts = load_facts("sports").subset(load_facts("sports").facts[::7])
    for seed in range(3):
        split = seed_facts(cfg, facts, cfg.settings[0], seed).splits[0]
        carve = validation_split(split)
        used = {f.id for s in (carve.forget, carve.maintain_train, carve.maintain_test) for f in s}
        assert len(carve.forget) == 4 and not used & evaluated_ids(split)
        assert {f.id for f in carve.forget}.isdisjoint(f.id for f in carve.maintain_test)


def test_a_trial_step_on_the_carve_sees_the_share_of_facts_an_arm_step_sees(tiny_llama, tiny_dir, tmp_path):
    """A forget set of 16 facts in batches of 4: a trial step sees a quarter of the carve's stand-in
    facts. Before, it took 4 of them too, a larger share, so the carve reached the target in fewer
    steps than the arm could and the ladder chose too low a rate for 64 facts. A forget set of one
    batch keeps its batch, and the chosen config keeps the arm's batch."""
    from types import SimpleNamespace

    from mechunlearn.edit.sweep import carve_batch_size, sweep, validation_split
    from mechunlearn.experiment.facts import seed_facts
    from mechunlearn.facts import load_facts

    assert carve_batch_size(16, 64, 34) == 9 and carve_batch_size(4, 16, 6) == 2
    assert carve_batch_size(16, 16, 10) == 16 and carve_batch_size(1, 64, 3) == 1
    cfg = load_config(_config(tiny_dir, tmp_path))
    facts = load_facts("sports").subset(load_facts("sports").facts[::10])
    for forget, batch in ((16, 4), (4, 4)):
        split = seed_facts(cfg, facts, SettingSpec(name="s", objective="edit", forget=forget), 0).splits[0]
        n_carve = len(validation_split(split).forget)
        seen = []

        def train_fn(lm, carve, c, seen=seen):
            seen.append(c.forget_batch_size)
            return SimpleNamespace(target={"reached": True, "steps": 3}, history=[])

        edit_cfg = cfg.edit_config("random", cfg.settings[0], 0)
        chosen, record = sweep(replace(edit_cfg, forget_batch_size=batch), {"lr": [1e-4, 1e-3]}, split,
                               lambda: tiny_llama, train_fn)
        assert len(split.forget) == forget and (n_carve, forget) in ((12, 16), (4, 4))
        expected = 3 if forget == 16 else batch  # 12 stand-in facts in batches of 3: a quarter a step
        assert seen == [expected, expected] and chosen.forget_batch_size == batch
        assert [t.get("carve_forget_batch_size") for t in record["trials"]] == [expected if forget == 16 else None] * 2


def test_a_corrupt_cell_is_named_and_computed_again(tiny_dir, tmp_path):
    cfg = load_config(_config(tiny_dir, tmp_path), {"localization": {"methods": ["all_mlps"]},
                                                     "evaluation": {"attacks": []}})
    out = tmp_path / "run"
    Experiment(cfg, out).run()
    cell = out / "cells" / "edit4__all_mlps__s0.json"
    good = json.loads(cell.read_text())
    cell.write_text(cell.read_text()[:100])  # what a crash in the middle of a write could leave
    Experiment(cfg, out).run()
    assert (out / "cells" / "edit4__all_mlps__s0.json.corrupt").exists()
    again = json.loads(cell.read_text())
    assert again["metrics"] == good["metrics"]  # recomputed, and the run is deterministic
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2


def test_a_failed_start_does_not_lock_the_run_folder(tiny_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MechunlearnError):
        Experiment(load_config(_config(tiny_dir, tmp_path), {"model": str(tmp_path / "absent")}), out).run()
    assert not out.exists()


RUN_CASES = {
    "yaml-syntax": ("settings: [{name: a\n", ["not valid YAML at line"]),
    "unknown-key": ("settings: [{name: a, objectve: log1m}]\n", ["settings[0].objectve", "'objective'"]),
    "wrong-type": ("training: {default: {steps: ten}}\n", ["training.default.steps", "whole number"]),
    "empty-seeds": ("seeds: []\n", ["'seeds' is empty"]),
    "unknown-method": ("localization: {methods: [all_mlps, magic]}\n", ["localization.methods[1]", "magic"]),
    "not-a-mapping": ("- 1\n- 2\n", ["YAML mapping"]),
    "bad-override": (None, ["KEY=VALUE"]),
    "negative-ladder-lr": ("training: {lr_ladder: [0.001, -1]}\n", ["training.lr_ladder", "positive"]),
    "zero-band": ("training: {target_band: 0}\n", ["training.target_band", "> 0"]),
    "ladder-and-sweep": ("training: {lr_ladder: [0.001], sweep: {lr: [0.001]}}\n", ["training.lr_ladder", "sweep"]),
}


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_bad_run_input_is_one_line_and_leaves_no_folder(name, tmp_path, capsys):
    from mechunlearn.cli.app import invoke

    text, expected = RUN_CASES[name]
    config = tmp_path / "exp.yaml"
    config.write_text(text or "seeds: [0]\n")
    out = tmp_path / "run"
    argv = ["run", str(config), "--out", str(out)] + (["--set", "seeds"] if text is None else [])
    status = invoke(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(e in lines[0] for e in expected), lines[0]
    assert not out.exists()


def test_report_names_what_is_wrong_with_a_run_folder(tiny_dir, tmp_path, capsys):
    from mechunlearn.cli.app import invoke

    def report(folder) -> str:
        status = invoke(["report", str(folder)])
        err = capsys.readouterr().err.strip()
        assert status == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    assert "not a run folder" in report(tmp_path / "absent")
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    assert "no finished cells" in report(tmp_path / "empty")
    cfg = load_config(_config(tiny_dir, tmp_path), {"localization": {"methods": ["all_mlps"]},
                                                     "evaluation": {"attacks": []}})
    out = tmp_path / "run"
    Experiment(cfg, out).run()
    capsys.readouterr()
    cell = out / "cells" / "edit4__all_mlps__s0.json"
    text = cell.read_text()
    cell.write_text(text[: len(text) // 2])
    assert "edit4__all_mlps__s0.json cannot be read" in report(out)
    cell.write_text("{}")
    assert "edit4__all_mlps__s0.json lacks the keys of a cell" in report(out)
    other = load_config(_config(tiny_dir, tmp_path), {"seeds": [1]})
    cell.write_text(text)
    with pytest.raises(MechunlearnError, match=r"holds a run with a different config \(evaluation.attacks differ; "
                       r"only seeds, analysis, localization.variants may change, and settings and localization "
                       r"methods be added\)"):
        Experiment(other, out).run()


def test_a_cached_localization_made_on_another_model_is_refused_unless_forced(tiny_grid, tmp_path, one_thread):
    config = load_config(tiny_grid(seeds=[0]))
    out = tmp_path / "run"
    Experiment(config, out).run()
    loc_path = out / "localizations" / "random__s0.json"
    loc = json.loads(loc_path.read_text())
    loc["evidence"]["model"]["n_layers"] = 26  # as if copied in from a 26-layer model's run
    loc_path.write_text(json.dumps(loc))
    (out / "cells" / "edit4__random__s0.json").unlink()
    with pytest.raises(MechunlearnError, match=r"random__s0.json: it was made on llama \(26 layers.*not on this model"):
        Experiment(config, out).run()
    forced = Experiment(config, out)
    forced.locs.force = True
    forced.run()
    assert (out / "cells" / "edit4__random__s0.json").exists()
