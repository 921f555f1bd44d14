"""``mechunlearn localize`` end to end on a tiny model saved to disk."""

import json

import pytest
from typer.testing import CliRunner

from mechunlearn.cli.app import app
from mechunlearn.errors import MechunlearnError
from mechunlearn.localize import Localization, Selection

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def model_dir(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)
    return path


def _run(*args):
    return CliRunner().invoke(app, ["localize", *map(str, args)], catch_exceptions=True)


def test_localize_command_writes_json_selection_and_heatmap(model_dir, tmp_path):
    # a random tiny model knows nothing: threshold 0 keeps every fact
    out = tmp_path / "ct.json"
    result = _run("--method", "causal_tracing_mlps", "--model", model_dir, "--threshold", 0, "--facts", 9,
                  "--budget", 50_000, "--rule", "under", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    loc = Localization.load(out)
    assert loc.method == "causal_tracing_mlps" and len(loc.fact_ids) == 9
    selection = Selection.load(tmp_path / "ct.selection.json")
    assert 0 < selection.n_params <= 50_000 and selection.budget == 50_000
    assert out.with_suffix(".png").stat().st_size > 1000

    flu = tmp_path / "flu.json"
    result = _run("--method", "fact_lookup", "--model", model_dir, "--threshold", 0, "--facts", 12, "--out", flu,
                  "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "flu.probes.png").exists()
    flu_loc = Localization.load(flu)
    assert len(flu_loc.params["probe_facts"]["fact_ids"]) == 96  # default --probe-facts: a superset
    assert set(flu_loc.fact_ids) <= set(flu_loc.params["probe_facts"]["fact_ids"])
    flu_sel = Selection.load(tmp_path / "flu.selection.json")
    assert flu_sel.rule == "own choice" and flu_sel.components == Localization.load(flu).chosen

    matched = tmp_path / "ap.json"
    result = _run("--method", "attribution_patching", "--model", model_dir, "--threshold", 0, "--facts", 12,
                  "--match", flu, "--rule", "closest", "--out", matched, "--device", "cpu",
                  "--param", "batch_size=4")
    assert result.exit_code == 0, result.output
    sel = Selection.load(tmp_path / "ap.selection.json")
    assert sel.budget == flu_sel.n_params and "fact_lookup" in sel.note
    assert json.loads(matched.read_text())["params"]["batch_size"] == 4


def test_ranking_only_method_without_budget_prints_the_ranking(model_dir, tmp_path):
    out = tmp_path / "r.json"
    result = _run("--method", "random", "--model", model_dir, "--threshold", 0, "--facts", 3, "--out", out,
                  "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "give a budget" in result.output and not (tmp_path / "r.selection.json").exists()


def test_bad_options_are_user_errors(model_dir, tmp_path):
    result = _run("--method", "nope", "--model", model_dir, "--out", tmp_path / "x.json")
    assert isinstance(result.exception, MechunlearnError)
    result = _run("--method", "random", "--model", model_dir, "--budget", 5, "--match", tmp_path / "x.json",
                  "--out", tmp_path / "x.json")
    assert isinstance(result.exception, MechunlearnError) and "not both" in str(result.exception)
    result = _run("--method", "random", "--model", model_dir, "--param", "oops", "--out", tmp_path / "x.json")
    assert isinstance(result.exception, MechunlearnError)


def test_edit_takes_the_localization_json_that_localize_cut_to_a_budget(model_dir, tmp_path):
    """``localize --method causal_tracing_mlps --budget N`` (or ``--match``) records its cut in the
    JSON: ``edit --localization`` on that JSON trains exactly the selection written beside it."""
    from mechunlearn.cli.app import invoke

    out = tmp_path / "ct.json"
    result = _run("--method", "causal_tracing_mlps", "--model", model_dir, "--threshold", 0, "--facts", 6,
                  "--budget", 50_000, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    recorded = json.loads(out.read_text())["evidence"]["selection"]
    selection = Selection.load(tmp_path / "ct.selection.json")
    assert recorded["budget"] == 50_000 and recorded["n_params"] == selection.n_params
    (tmp_path / "ct.selection.json").unlink()  # the JSON alone must do
    status = invoke(["edit", "--model", str(model_dir), "--localization", str(out), "--threshold", "0", "--forget",
                     "4", "--steps", "1", "--target", "0", "--device", "cpu", "--out", str(tmp_path / "edit")])
    assert status == 0
    log = json.loads((tmp_path / "edit" / "train_log.json").read_text())
    assert sorted(log["components"]) == sorted(selection.components)
    assert log["n_trained_params"] == selection.n_params


def test_nothing_is_written_when_an_option_is_bad(model_dir, tmp_path):
    result = _run("--method", "random", "--model", model_dir, "--budget", 0, "--out", tmp_path / "x.json")
    assert isinstance(result.exception, MechunlearnError) and "--budget" in str(result.exception)
    result = _run("--method", "causal_tracing", "--model", model_dir, "--threshold", 0, "--facts", 3,
                  "--budget", 10**12, "--out", tmp_path / "x.json", "--device", "cpu")
    assert isinstance(result.exception, MechunlearnError) and "exceeds" in str(result.exception)
    assert list(tmp_path.iterdir()) == []
