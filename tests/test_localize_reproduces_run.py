"""``mechunlearn localize --facts N --seed S`` localizes on the facts a run with ``n_facts: N``
draws for seed S, and cuts to the run's default budget rule: its files equal the run's."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from mechunlearn.cli.app import app
from mechunlearn.experiment import Experiment, load_config
from mechunlearn.experiment.config import BudgetSpec
from mechunlearn.experiment.facts import draw_localization
from mechunlearn.facts import load_facts

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 1


def _run_config(tiny_dir, tmp_path):
    cfg = {
        "model": str(tiny_dir), "device": "cpu", "seeds": [SEED],
        "facts": {"dataset": "sports", "threshold": 0.0, "limit": 60},
        # the budget's rule is left to its default, as the command's --rule is
        "localization": {"n_facts": 8, "probe_facts": 20, "methods": ["fact_lookup", "attribution_patching"],
                         "budget": {"match": "fact_lookup", "granularity": "matrix"}},
        "settings": [{"name": "edit4", "objective": "edit", "forget": 4}],
        "training": {"target": None, "default": {"steps": 1, "forget_batch_size": 4, "maintain_batch_size": 4,
                                                 "general_batch_size": 1, "general_length": 16}},
        "evaluation": {"formats": ["train"], "attacks": ["probe"],
                       "config": {"lm_windows": 1, "lm_window_length": 16}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def _localize(tiny_dir, out, *args):
    result = CliRunner().invoke(app, ["localize", "--model", str(tiny_dir), "--device", "cpu", "--threshold", "0",
                                      "--limit", "60", "--facts", "8", "--seed", str(SEED), "--out", str(out),
                                      "--granularity", "matrix", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_localize_command_reproduces_the_runs_localization_files(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("mechunlearn.experiment.runner.write_report", lambda out: None)  # not what is tested
    run = tmp_path / "run"
    Experiment(_run_config(tiny_dir, tmp_path), run).run()
    folder = run / "localizations"
    data = json.loads((run / "data.json").read_text())

    flu = _localize(tiny_dir, tmp_path / "flu.json", "--method", "fact_lookup", "--probe-facts", 20)
    ap = _localize(tiny_dir, tmp_path / "ap.json", "--method", "attribution_patching", "--match", tmp_path / "flu.json")

    run_flu = json.loads((folder / f"fact_lookup__s{SEED}.json").read_text())
    run_ap = json.loads((folder / f"attribution_patching__s{SEED}.json").read_text())
    assert flu["fact_ids"] == run_flu["fact_ids"] == data["localization_facts"][f"s{SEED}"]
    assert len(flu["fact_ids"]) == 8
    assert flu["params"]["probe_facts"]["fact_ids"] == run_flu["params"]["probe_facts"]["fact_ids"]
    assert len(flu["params"]["probe_facts"]["fact_ids"]) == 20
    assert flu["chosen"] == run_flu["chosen"] and flu["chosen"]
    assert ap["fact_ids"] == run_ap["fact_ids"]
    assert ap["scores"].keys() == run_ap["scores"].keys()
    assert all(ap["scores"][k] == pytest.approx(v, rel=1e-4, abs=1e-7) for k, v in run_ap["scores"].items())

    # the cut to FLU's size: the same rule (the run's default) and the same components
    ap_sel = json.loads((tmp_path / "ap.selection.json").read_text())
    run_sel = json.loads((folder / f"attribution_patching__s{SEED}.selection.json").read_text())
    assert ap_sel["rule"] == run_sel["rule"] == BudgetSpec.rule == "within"
    assert ap_sel["components"] == run_sel["components"] and ap_sel["n_params"] == run_sel["n_params"]


def test_the_draw_is_seeded_leaves_half_the_known_facts_and_nests_the_probe_facts():
    known = load_facts("sports")
    loc, probes = draw_localization(known, 32, 96, seed=3)
    again, _ = draw_localization(known, 32, 96, seed=3)
    other, _ = draw_localization(known, 32, 96, seed=4)
    assert [f.id for f in loc] == [f.id for f in again] != [f.id for f in other]
    assert len(loc) == 32 and len(probes) == 96 and [f.id for f in probes][:32] == [f.id for f in loc]
    few = known.subset(list(known.facts)[:20])
    loc, probes = draw_localization(few, 32, 96, seed=3)
    assert len(loc) == len(probes) == 10  # at most half, so the rest can be split
