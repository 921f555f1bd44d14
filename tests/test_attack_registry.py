"""The attack registry: an attack registered inside a test, and declared nowhere else, is run by
the evaluation, reported with its headline metric and curve, costed in the run's memory estimate,
and left out for the unedited model when it says so."""

import random
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import pytest

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate import EvalConfig, evaluate_run
from mechunlearn.evaluate.attacks import ATTACKS, Attack, get_attack, register
from mechunlearn.evaluate.attacks.registry import CurvePlot
from mechunlearn.evaluate.headline import METRICS, curves, for_objective
from mechunlearn.evaluate.metric import Metric
from mechunlearn.experiment import load_config
from mechunlearn.experiment.estimate import run_estimate
from mechunlearn.experiment.plan import plan
from mechunlearn.experiment.runner import Experiment
from mechunlearn.facts import load_facts, split_facts
from mechunlearn.io import write_json_atomic
from mechunlearn.models.memory import Stage, model_shape
from mechunlearn.report import write_report
from mechunlearn.report.metrics import present

pytestmark = pytest.mark.usefixtures("one_thread")

BYTES_PER_FACT = 1000


@dataclass
class ToyConfig:
    scale: float = 2.0
    seed: int = 0


def toy_run(lm, split, config: ToyConfig, progress: bool) -> dict:
    n_layers = lm.model.config.num_hidden_layers
    return {"score": config.scale * len(split.forget_eval), "n_layers": n_layers}


def toy_cost(shape, config: ToyConfig, n_forget: int, tokens: int, copies: int) -> Stage:
    return Stage("toy attack", {"toy buffer": BYTES_PER_FACT * n_forget}, {"forward": 1}, "toy.scale")


@pytest.fixture
def toy():
    attack = register(Attack(
        "toy", ToyConfig, toy_run, stage="toy", metrics=(Metric("toy.score", "toy score", True, True),),
        headline=lambda result: {"toy.score": result["score"], "toy.n_layers": result["n_layers"]},
        curves=lambda result: {"toy": [[0, 0.0], [1, result["score"]]]}, cost=toy_cost, attacks_unedited=False,
        plots=(CurvePlot("toy", "toy", "toy attack", "round", "toy score"),),
    ))
    yield attack
    del ATTACKS["toy"]


@pytest.fixture(scope="module")
def split():
    facts = load_facts("sports", None)
    return split_facts(facts.subset(random.Random(1).sample(facts.facts, 40)), forget=6, seed=0)


def test_the_built_in_attacks_are_registered_in_their_order():
    assert list(ATTACKS) == ["relearn", "probe", "softprompt"]
    assert not get_attack("relearn").attacks_unedited and get_attack("probe").attacks_unedited
    with pytest.raises(MechunlearnError, match="registered twice"):
        register(ATTACKS["probe"])
    with pytest.raises(MechunlearnError, match="unknown attack 'nope'"):
        get_attack("nope")


def test_a_registered_attack_is_evaluated_and_reported(toy, tiny_llama, split, tmp_path):
    config = EvalConfig(formats=("train",), attacks=("toy", "probe"), lm_windows=1, lm_window_length=16)
    config.probe.layers = (3,)
    assert config.attack_config("toy") == ToyConfig()  # registered after EvalConfig: its defaults
    result = evaluate_run(tiny_llama, split, config=config)
    assert list(result.attacks) == ["probe", "toy"]  # registry order, not the order asked
    assert result.attacks["toy"] == {"score": 12.0, "n_layers": 4}
    assert result.aggregates["toy.score"] == 12.0 and result.aggregates["toy.n_layers"] == 4
    assert result.seeds["toy"] == 0
    assert curves(result.attacks)["toy"] == [[0, 0.0], [1, 12.0]] and "probe_truth" in curves(result.attacks)
    names = list(METRICS)
    assert METRICS["toy.score"].label == "toy score"
    assert names.index("softprompt.error") < names.index("toy.score") < names.index("maintain.train.p_true")

    metrics = for_objective(result.aggregates, "edit")
    for method, shift in (("random", 0.0), ("unedited", 1.0)):
        cell = {"setting": "s", "method": method, "seed": 0, "n_params": 10, "curves": curves(result.attacks),
                "metrics": {**metrics, "toy.score": metrics["toy.score"] + shift}}
        write_json_atomic(tmp_path / "cells" / f"s__{method}__s0.json", cell)
        assert METRICS["toy.score"] in present([cell])
    write_report(tmp_path)
    table = pd.read_csv(tmp_path / "results.csv")
    assert table.set_index("method")["toy.score"].to_dict() == {"random": 12.0, "unedited": 13.0}
    page = (tmp_path / "report.html").read_text()
    assert "toy score" in page and 'alt="toy_s"' in page  # its curve is plotted


def test_a_registered_attack_is_set_from_a_config_like_a_built_in_one(toy, tiny_llama, split, tiny_grid):
    config = EvalConfig.from_dict({"formats": ["train"], "attacks": ["toy"], "seed": 5, "lm_windows": 1,
                                   "lm_window_length": 16, "toy": {"scale": 3.0}})
    assert config.attack_config("toy") == ToyConfig(scale=3.0, seed=5)  # the top-level seed reaches it too
    result = evaluate_run(tiny_llama, split, config=config)
    assert result.attacks["toy"]["score"] == 18.0 and result.seeds["toy"] == 5
    assert result.to_json()["config"]["toy"] == {"scale": 3.0, "seed": 5}  # recorded as a section of its own
    assert "later_attacks" not in result.to_json()["config"]
    with pytest.raises(MechunlearnError, match="unknown toy setting"):
        EvalConfig.from_dict({"toy": {"scael": 3.0}})
    run = load_config(str(tiny_grid(evaluation={"formats": ["train"], "attacks": ["toy"],
                                                "config": {"toy": {"scale": 4.0}}})))
    assert run.eval_config(run.settings[0], seed=1).attack_config("toy") == ToyConfig(scale=4.0, seed=1)


def test_a_registered_attack_is_costed_in_the_run_estimate(toy, tiny_grid, tiny_dir):
    config = load_config(str(tiny_grid(evaluation={"formats": ["train"], "attacks": ["toy"]})))
    estimate = run_estimate(config, plan(config), model_shape(str(tiny_dir)), {"edit4": ["The sport of X is"]})
    stage = next(s for s in estimate.stages if s.name == "toy attack")
    assert stage.parts == {"toy buffer": 4 * BYTES_PER_FACT}  # forget 4 facts, one block
    assert stage.passes == {"forward": 4}  # 2 seeds x 2 arms: the toy does not attack the unedited model
    assert estimate.stages[-1] is stage and "relearning step" not in [s.name for s in estimate.stages]


def test_the_unedited_model_is_spared_an_attack_that_says_so(toy, tiny_grid, split, monkeypatch):
    config = load_config(str(tiny_grid(evaluation={"formats": ["train"], "attacks": ["probe", "toy"]})))
    asked = []
    monkeypatch.setattr("mechunlearn.experiment.runner.evaluate_run", lambda lm, s, attacks, **kw: asked.append(attacks))
    runner = SimpleNamespace(config=config, skipped_formats={})
    for edited in (True, False):
        Experiment.evaluate(runner, None, config.settings[0], [split], seed=0, edited=edited)
    assert [list(a) for a in asked] == [["probe", "toy"], ["probe"]]
