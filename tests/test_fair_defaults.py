"""Acceptance of the defaults that keep a comparison fair, on a relation they were never tuned for
(a table written for this test, ``fixtures/city_country.csv``: "Lisbon is a city in the country of"
Portugal; 35 facts, every one known by the embedded Gemma 3 270M at P(true) 0.62-0.95 when the table
was written). The run's config is the default one: training to the 0.9 target with the shared step
cap and the lr ladder, every compared arm cut to FLU's parameter count by the ``within`` rule at its
10% tolerance. Only what costs time and is not under test is shrunk: 4 edited facts, 8 localization
facts, smaller maintain and general-text batches, the training format only, no attacks. Every
compared arm must reach the target and lie within the tolerance; the report must say so."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from mechunlearn.edit.config import DEFAULT_STEPS
from mechunlearn.experiment.config import DEFAULT_LR_LADDER, from_dict
from mechunlearn.experiment.runner import Experiment

pytestmark = pytest.mark.integration

TABLE = Path(__file__).parent / "fixtures" / "city_country.csv"
ARMS = ("fact_lookup", "causal_tracing", "attribution_patching")


def test_default_config_on_a_new_relation_every_arm_reaches_the_target_within_the_budget(tmp_path):
    config = from_dict({
        "facts": {"dataset": "table", "data": str(TABLE)},
        "localization": {"methods": list(ARMS), "n_facts": 8, "probe_facts": 16},
        "settings": [{"name": "cities", "objective": "edit", "forget": 4}],
        "training": {"default": {"maintain_batch_size": 8, "general_batch_size": 1, "general_length": 16}},
        "evaluation": {"formats": ["train"], "attacks": [], "config": {"lm_windows": 1, "lm_window_length": 16}},
    })
    # the defaults under test, as they ship
    budget, training = config.localization.budget, config.training
    assert (budget.match, budget.rule, budget.tolerance, budget.granularity) == ("fact_lookup", "within", 0.1, None)
    assert (training.target, training.lr_ladder, training.sweep) == (0.9, DEFAULT_LR_LADDER, None)
    edit = config.edit_config("causal_tracing", config.settings[0], 0)
    assert edit.steps == DEFAULT_STEPS == 30 and edit.lr == 1e-4

    out = tmp_path / "run"
    Experiment(config, out, Console(stderr=True, width=160)).run()

    known = json.loads((out / "data.json").read_text())["known"]
    assert known["known"] >= 30, known  # the model knows the table's facts (P(true) > 0.5)
    cells = {m: json.loads((out / "cells" / f"cities__{m}__s0.json").read_text()) for m in ARMS}
    flu = cells["fact_lookup"]["n_params"]
    print({m: (c["n_params"], c["train"]["target"][0]["steps"], c["train"].get("first_attempt")) for m, c in cells.items()})
    for method, cell in cells.items():
        (target,) = cell["train"]["target"]
        assert target["reached"] and target["strength"] >= 0.9, (method, target)
        assert cell["metrics"]["edit.train.p_new"] > 0.8, method  # the edit holds when evaluated
        if method == "fact_lookup":
            assert cell["budget"] is None  # FLU is the budget
            continue
        assert cell["budget"] == {"params": flu, "matched_to": "fact_lookup", "rule": "within", "tolerance": 0.1}
        assert abs(cell["n_params"] / flu - 1) <= 0.1, (method, cell["n_params"], flu)
    report = (out / "report.html").read_text()
    assert "Budget: every compared arm trained within ±10% of the parameter count it was cut to" in report
    assert all(not v.get("budget_outside") for v in json.loads((out / "verdicts.json").read_text()))
