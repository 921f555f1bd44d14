"""The records a run writes are typed by the layer that writes them, and read back unchanged."""

import json

import pytest

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.cell import Cell


def _cell() -> Cell:
    return Cell(setting="edit4", method="fact_lookup", seed=1, objective="edit", n_params=1024,
                budget={"params": 1024, "matched_to": 1000}, components=["blocks.1.mlp.in"],
                metrics={"edit.qa.p_new": 0.5, "probe.truth": None}, curves={"relearn": [[0, 0.1], [5, 0.4]]},
                train={"seconds": 2.0}, evaluation={"aggregates": {"lm_loss": 3.0}}, seconds=4.5)


def test_a_cell_round_trips_through_its_json_with_the_keys_in_order(tmp_path):
    cell = _cell()
    data = cell.to_json()
    assert list(data) == ["setting", "method", "seed", "objective", "n_params", "budget", "components", "metrics",
                          "curves", "train", "evaluation", "seconds", "code"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    assert Cell.read(path) == cell and Cell.read(path).to_json() == data


def test_a_cell_keeps_keys_it_does_not_know_and_names_what_is_missing(tmp_path):
    data = {**_cell().to_json(), "added_later": [1, 2]}
    assert Cell.from_json(data).to_json() == data
    older = {k: v for k, v in data.items() if k not in ("budget", "curves", "code")}  # before those keys existed
    assert Cell.from_json(older).budget is None and Cell.from_json(older).code is None
    (tmp_path / "bad.json").write_text(json.dumps({"setting": "edit4", "method": "random"}))
    with pytest.raises(MechunlearnError, match="lacks the keys of a cell"):
        Cell.read(tmp_path / "bad.json")
    (tmp_path / "torn.json").write_text('{"setting": ')
    with pytest.raises(MechunlearnError, match="cannot be read"):
        Cell.read(tmp_path / "torn.json")


def test_an_evaluation_result_round_trips_through_its_json(tiny_llama):
    from mechunlearn.evaluate import EvalConfig, evaluate_run
    from mechunlearn.evaluate.result import EvaluationResult
    from mechunlearn.facts import load_builtin_athletes, split_facts

    athlete_split = split_facts(load_builtin_athletes(), forget=4, seed=0)
    result = evaluate_run(tiny_llama, athlete_split, config=EvalConfig(formats=("train",), lm_windows=1))
    data = json.loads(json.dumps(result.to_json()))
    assert list(data) == ["model", "source", "config", "templates", "seeds", "facts", "split", "forget",
                          "side_effects", "attacks", "aggregates", "rows", "seconds"]
    again = EvaluationResult.from_json(data)
    assert again.aggregates == result.aggregates and again.to_json() == data
    assert again.aggregates["forget.train.p_true"] == pytest.approx(
        sum(r["p_true"] for r in result.rows if r["set"] == "forget") / len(athlete_split.forget_eval))
    with pytest.raises(MechunlearnError, match=r"lacks \['rows'\]"):
        EvaluationResult.from_json({k: v for k, v in data.items() if k != "rows"})
