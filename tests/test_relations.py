"""A user's table with several relations: a setting (or ``edit --relation``) edits one relation's
facts and the others are reported as unrelated; the QA prompt's solved example is a never-evaluated
fact of the asked fact's own relation; a table without questions says which formats it skipped; a
table whose answers never repeat runs to the end (the latent probe's pairwise form)."""

import csv
import io
import json

import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.formats import (
    PAPER_SYSTEM_SPORTS,
    build_format,
    format_templates,
    qa_prompt,
)
from mechunlearn.experiment import Experiment, load_config
from mechunlearn.facts import load_facts, load_table, split_facts

pytestmark = pytest.mark.usefixtures("one_thread")

LANGUAGES = [" French", " English", " Spanish", " Italian", " German"]
SPORTS = [" football", " baseball", " basketball"]
TONGUE, SPORT = "mother tongue", "plays the sport of"


def two_relations(path, n=24, questions=True):
    """``n`` facts of each relation (tiny-tokenizer words as answers), with a question per fact."""
    rows = []
    for i in range(n):
        s = f"Mira{i}"
        rows.append({"id": f"t{i}", "subject": s, "prompt": f"The mother tongue of {s} is",
                     "target_true": LANGUAGES[i % 5], "target_new": LANGUAGES[(i + 1) % 5], "relation": TONGUE,
                     "question": f"What is the mother tongue of {s}?"})
        s = f"Olek{i}"
        rows.append({"id": f"s{i}", "subject": s, "prompt": f"{s} plays the sport of", "target_true": SPORTS[i % 3],
                     "target_new": SPORTS[(i + 1) % 3], "relation": SPORT, "question": f"What sport does {s} play?"})
    if not questions:
        rows = [{k: v for k, v in r.items() if k != "question"} for r in rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue())
    return path


def test_a_split_edits_one_relation_and_keeps_a_share_of_the_others_for_testing(tmp_path):
    facts = load_table(two_relations(tmp_path / "t.csv"))
    split = split_facts(facts, forget=4, seed=0, relation=SPORT)
    assert len(split.forget) == 4 and {f.relation for f in split.forget} == {SPORT}
    assert split.rule == f"random 4 of the relation {SPORT!r}"
    test = split.maintain_test
    assert sum(f.relation == TONGUE for f in test) == 5 and sum(f.relation == SPORT for f in test) == 4  # 20%
    assert len(split.maintain_train) + len(test) + 4 == 48
    with pytest.raises(MechunlearnError, match="'capital'; its relations are 'mother tongue', 'plays the sport of'"):
        split_facts(facts, forget=4, relation="capital")
    with pytest.raises(MechunlearnError, match="relation 'plays the sport of', which has only 24"):
        split_facts(facts, forget=25, relation=SPORT)
    # no relation: the split is what it always was (a random draw over every fact)
    assert {f.relation for f in split_facts(facts, forget=12, seed=0).forget} == {TONGUE, SPORT}


def test_the_qa_example_is_a_never_evaluated_fact_of_the_asked_facts_relation(tmp_path):
    facts = load_table(two_relations(tmp_path / "t.csv"))
    split = split_facts(facts, forget=6, seed=1)
    evaluated = {f.id for s in (split.forget, split.forget_eval, split.maintain_test) for f in s}
    examples = {e.relation: e for e in split.forget_eval.examples}
    assert set(examples) == {TONGUE, SPORT}
    train_ids = {f.id for f in split.maintain_train}
    assert all(e.id in train_ids and e.id not in evaluated for e in examples.values())
    for part in (split.forget_eval, split.maintain_test):
        for fact, item in zip(part, build_format(part, "qa").items, strict=True):
            example = examples[fact.relation]
            shown = f"Question: {example.question} Answer:{example.target_true}\nQuestion: {fact.question} Answer:"
            assert item.prompts[0].endswith(shown)
            assert "France" not in item.prompts[0]
    # a whole-table template names no example, a one-relation one shows its own
    assert "{example question}" in format_templates(split.maintain_test, ["qa"])["qa"]
    one = split.forget_eval.subset([f for f in split.forget_eval if f.relation == SPORT])
    assert f"Question: {examples[SPORT].question} Answer:{examples[SPORT].target_true}" in format_templates(one, ["qa"])["qa"]
    # a relation without a never-evaluated fact gets no example, never an evaluated one
    alone = split.forget_eval.with_examples(())
    assert qa_prompt(alone, "Q?", relation=SPORT).endswith("correct. Question: Q? Answer:")


def test_the_athletes_qa_prompt_is_unchanged():
    athletes = load_facts("sports")
    split = split_facts(athletes, forget=8, seed=0)
    expected = (f"{PAPER_SYSTEM_SPORTS} Question: What sport does Tiger Woods play? Answer: golf\n"
                f"Question: What sport does {split.forget_eval.facts[0].subject} play? Answer:")
    assert build_format(split.forget_eval, "qa").items[0].prompts[0] == expected


def _run_config(tiny_dir, tmp_path, table, **setting):
    cfg = {"model": str(tiny_dir), "seeds": [0], "data_dir": str(tmp_path),
           "facts": {"dataset": "table", "data": table.name, "threshold": 0.0},
           "localization": {"n_facts": 6, "probe_facts": 0, "methods": ["random"],
                            "budget": {"match": None, "params": 20000, "rule": "under"}},
           "settings": [{"name": "one", "objective": "edit", "forget": 4, **setting}],
           "training": {"target": None, "default": {"steps": 1, "forget_batch_size": 4, "maintain_batch_size": 4,
                                                    "general_batch_size": 1, "general_length": 16}},
           "evaluation": {"formats": ["train", "qa"], "attacks": [],
                          "config": {"lm_windows": 1, "lm_window_length": 16}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_cli_edits_one_relation_and_reports_the_other_as_unrelated(tiny_dir, tmp_path):
    from mechunlearn.cli.app import app

    table = two_relations(tmp_path / "two.csv")
    config = _run_config(tiny_dir, tmp_path, table, relation=TONGUE)
    bad = CliRunner().invoke(app, ["run", str(config), "--set", "settings=[{name: one, forget: 4, relation: capital}]",
                                   "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, MechunlearnError)
    assert "no fact of 'two' has the relation 'capital'; its relations are 'mother tongue', 'plays the sport of'" in \
        str(bad.exception)
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert done.exit_code == 0, done.output
    data = json.loads((out / "data.json").read_text())
    tongue = {f"t{i}" for i in range(24)}
    localization = set(data["localization_facts"]["one__s0"])
    assert len(localization) == 6 and localization <= tongue  # localized on the edited relation
    for method in ("unedited", "random"):
        cell = json.loads((out / "cells" / f"one__{method}__s0.json").read_text())
        ev = cell["evaluation"]
        assert set(ev["split"]["forget"]) <= tongue and len(ev["split"]["forget"]) == 4
        others = [i for i in ev["split"]["maintain_test"] if i not in tongue]
        unrelated = ev["side_effects"]["unrelated"]
        assert unrelated["status"] == "evaluated" and unrelated["edited_relations"] == [TONGUE]
        assert unrelated["relations"] == [SPORT] and unrelated["n_facts"] == len(others) == 5  # 20% of 24
        rows = [r for r in ev["side_effects"]["maintain"]["rows"] if r["id"] in others and r["format"] == "train"]
        assert cell["metrics"]["unrelated.train.p_true"] == pytest.approx(sum(r["p_true"] for r in rows) / 5)
        assert cell["metrics"]["unrelated.qa.n"] == 5

        # the QA prompts' solved example: one per relation, of that relation, never evaluated, recorded
        evaluated = set(ev["split"]["forget"]) | set(ev["split"]["maintain_test"])
        recorded = {e["relation"]: e for e in data["qa_examples"]["one"]["0"]}
        assert set(recorded) == {TONGUE, SPORT}
        assert recorded[TONGUE]["id"] in localization and recorded[TONGUE]["source"].startswith("a localization fact")
        assert recorded[SPORT]["id"] in set(ev["split"]["maintain_train"]) and recorded[SPORT]["id"].startswith("s")
        assert not {e["id"] for e in recorded.values()} & evaluated
        example = recorded[TONGUE]
        assert f"Question: {example['question']} Answer: {example['answer']}\nQuestion: {{question}}" in ev["templates"]["qa"]
    assert "never evaluated" in data["qa_example_rule"]
    assert "Question/answer solved example" in (out / "report.html").read_text()


def test_edit_cli_edits_one_relation_and_evaluate_reports_the_other_as_unrelated(tiny_dir, tmp_path):
    from mechunlearn.cli.app import app

    table = two_relations(tmp_path / "two.csv")
    args = ["edit", "--model", str(tiny_dir), "--dataset", "table", "--data", str(table), "--threshold", "0",
            "--forget", "4", "--components", "blocks.1.mlp", "--steps", "1", "--target", "0", "--general-length", "16"]
    bad = CliRunner().invoke(app, [*args, "--relation", "capital", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, MechunlearnError)
    assert str(bad.exception).startswith("--relation: no fact of 'two' has the relation 'capital'; its relations "
                                         "are 'mother tongue', 'plays the sport of'")
    out = tmp_path / "edit"
    done = CliRunner().invoke(app, [*args, "--relation", SPORT, "--out", str(out)])
    assert done.exit_code == 0, done.output
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["split"]["forget"]) == 4 and all(i.startswith("s") for i in log["split"]["forget"])
    assert log["facts"]["relation"] == SPORT
    result = tmp_path / "eval.json"
    bad = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--base", "none", "--relation", TONGUE,
                                   "--out", str(result)])
    assert isinstance(bad.exception, MechunlearnError) and "the split is the edit's" in str(bad.exception)
    done = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--base", "none", "--formats", "train",
                                    "--out", str(result)])
    assert done.exit_code == 0, done.output
    unrelated = json.loads(result.read_text())["edited"]["side_effects"]["unrelated"]
    assert unrelated["edited_relations"] == [SPORT] and unrelated["relations"] == [TONGUE]
    assert unrelated["n_facts"] == 5 and unrelated["aggregates"]["train"]["n"] == 5


def test_localize_and_evaluate_cli_take_one_relation(tiny_dir, tmp_path):
    from mechunlearn.cli.app import app

    table = two_relations(tmp_path / "two.csv")
    common = ["--model", str(tiny_dir), "--dataset", "table", "--data", str(table), "--threshold", "0"]
    loc_out = tmp_path / "loc.json"
    bad = CliRunner().invoke(app, ["localize", "--method", "random", *common, "--relation", "capital",
                                   "--out", str(loc_out)])
    assert isinstance(bad.exception, MechunlearnError) and str(bad.exception).startswith("--relation: no fact")
    assert not loc_out.exists()
    done = CliRunner().invoke(app, ["localize", "--method", "random", *common, "--relation", TONGUE, "--facts", "6",
                                    "--out", str(loc_out)])
    assert done.exit_code == 0, done.output
    localized = json.loads(loc_out.read_text())["fact_ids"]
    assert len(localized) == 6 and all(i.startswith("t") for i in localized)

    result = tmp_path / "eval.json"
    done = CliRunner().invoke(app, ["evaluate", *common, "--base", "none", "--formats", "train", "--forget", "4",
                                    "--relation", SPORT, "--out", str(result)])
    assert done.exit_code == 0, done.output
    edited = json.loads(result.read_text())["edited"]
    assert len(edited["split"]["forget"]) == 4 and all(i.startswith("s") for i in edited["split"]["forget"])
    assert edited["side_effects"]["unrelated"]["relations"] == [TONGUE]


def test_facts_known_scores_one_relation(tiny_dir, tmp_path):
    from mechunlearn.cli.app import app

    table = two_relations(tmp_path / "two.csv")
    args = ["facts", "known", "--model", str(tiny_dir), "--dataset", "table", "--data", str(table), "--threshold", "0"]
    out = tmp_path / "known.csv"
    bad = CliRunner().invoke(app, [*args, "--relation", "capital", "--out", str(out)])
    assert isinstance(bad.exception, MechunlearnError) and str(bad.exception).startswith("--relation: no fact")
    assert not out.exists()
    done = CliRunner().invoke(app, [*args, "--relation", SPORT, "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = pd.read_csv(out)
    assert len(rows) == 24 and rows.id.str.startswith("s").all()
    assert f"of the relation '{SPORT}'" in " ".join(done.output.split())


def distinct_answers(path, n=28):
    """An open relation whose answers never repeat (a capital per country), and no question column."""
    words = [" river", " music", " city", " French", " English", " Spanish", " Italian", " German", " football",
             " baseball", " basketball", " golf", " Tiger", " Woods", " sport", " helpful", " chatbot", " answers",
             " questions", " athletes", " mother", " tongue", " Question", " Options", " Fact", " plays", " does",
             " play"]
    lines = ["id,subject,prompt,target_true,target_new,relation"]
    lines += [f"c{i},Land{i},The capital of Land{i} is,{words[i]},{words[(i + 7) % n]},capital" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_run_on_answers_that_never_repeat_without_questions_finishes(tiny_dir, tmp_path):
    table = distinct_answers(tmp_path / "capitals.csv")
    config = load_config(_run_config(tiny_dir, tmp_path, table), {
        "evaluation": {"formats": ["train", "qa", "mcq"], "attacks": ["relearn", "probe"],
                       "config": {"relearn": {"steps": 1, "eval_every": 1, "rank": 2, "n_maintain": 2,
                                              "general_length": 16}, "probe": {"layers": [1, 3]}}}})
    out = tmp_path / "run"
    text = io.StringIO()
    Experiment(config, out, Console(file=text, width=200)).run()
    line = ("setting 'one': formats qa, mcq skipped: no fact can be asked in them (qa needs a question ('question' "
            "column); mcq needs a question and answer options ('question' and 'mc_choices' columns))")
    assert line in text.getvalue()
    data = json.loads((out / "data.json").read_text())
    assert data["skipped_formats"] == {"one": {"qa": "a question ('question' column)",
                                               "mcq": "a question and answer options ('question' and 'mc_choices' "
                                                      "columns)"}}
    assert "Setting one: formats qa, mcq skipped" in (out / "report.html").read_text()
    for method in ("unedited", "random"):
        ev = json.loads((out / "cells" / f"one__{method}__s0.json").read_text())["evaluation"]
        assert list(ev["forget"]["aggregates"]) == ["train"]  # qa and mcq were not asked at all
        probe = ev["attacks"]["probe"]
        assert probe["form"] == "pairwise" and "answer classes do not fit" in probe["form_reason"]
        assert [r["layer"] for r in probe["layers"]] == [1, 3] and probe["reads_true"] is not None
        assert probe["n_readable_true"] == probe["n_readable_target"] == 4
    assert "the pairwise probe tells the true answer from the edit target" in (out / "report.html").read_text()
