"""Formats, metrics, side effects, the run record and the CLI, on tiny random models."""

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate import (
    EvalConfig,
    build_format,
    compare_runs,
    evaluate_facts,
    evaluate_run,
    load_mmlu,
    mmlu_eval,
    option_order,
    write_results,
)
from mechunlearn.evaluate.formats import LETTERS, PAPER_SYSTEM_SPORTS, FormatStyle
from mechunlearn.evaluate.lm_loss import lm_loss, next_token_loss
from mechunlearn.evaluate.mmlu import choose_shots, mmlu_prompt
from mechunlearn.facts import Fact, FactSet, answer_probs, load_facts, split_facts, split_from_facts
from mechunlearn.facts.general_text import general_windows
from mechunlearn.models.encoding import encode
from mechunlearn.models.scoring import answer_token_id, last_token_logits
from mechunlearn.models.tiny import tiny_model

MMLU = Path(__file__).parent / "fixtures" / "mmlu_tiny.csv"
SPORTS4 = {"football", "baseball", "basketball", "golf"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def athletes() -> FactSet:
    facts = load_facts("sports")
    return facts.subset(random.Random(0).sample(facts.facts, 24), "24 athletes")


def letter_probs(lm, prompt: str, n: int) -> torch.Tensor:
    ids = [answer_token_id(lm.tokenizer, f" {LETTERS[i]}") for i in range(n)]
    with torch.no_grad():
        return last_token_logits(lm.model, encode(lm.tokenizer, [prompt]), ids)[0].softmax(-1)


def test_mcq_shuffle_is_seeded_logged_and_represents_golf(athletes):
    letter = FormatStyle(mcq_format="letter-1shot")
    a, b, c = (build_format(athletes, "mcq", seed, letter) for seed in (0, 0, 1))
    assert [i.options for i in a.items] == [i.options for i in b.items]
    assert [i.options for i in a.items] != [i.options for i in c.items]
    assert len({i.options.index(f.target_true.strip()) for i, f in zip(a.items, athletes, strict=True)}) == 4
    for item, fact in zip(a.items, athletes, strict=True):
        assert set(item.options) == SPORTS4
        assert item.candidates == (" A", " B", " C", " D")
        assert item.true_answer == f" {LETTERS[item.options.index(fact.target_true.strip())]}"
        assert item.new_answer == f" {LETTERS[item.options.index(fact.target_new.strip())]}"
        shown = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(item.options))
        assert item.prompts[0].endswith(f"Question: {fact.question}\n{shown}\nAnswer:")
        assert item.prompts[0].startswith(PAPER_SYSTEM_SPORTS)
        assert "Tiger Woods" in item.prompts[0]  # the solved example
    # a fact's order depends on the fact and the seed, not on the set it is in
    one = athletes.subset(athletes.facts[5:6])
    assert build_format(one, "mcq", 0).items[0].options == a.items[5].options == option_order(athletes.facts[5], 0)


def test_train_format_matches_the_foundation_scorer(tiny_llama, athletes):
    rows = evaluate_facts(tiny_llama, athletes, ("train",)).rows
    p_true, p_new = answer_probs(tiny_llama.model, tiny_llama.tokenizer, athletes)
    assert [r.p_true for r in rows] == pytest.approx(p_true.tolist(), abs=1e-5)
    assert [r.p_new for r in rows] == pytest.approx(p_new.tolist(), abs=1e-5)
    ids = [answer_token_id(tiny_llama.tokenizer, a) for a in athletes.answers]
    with torch.no_grad():
        top = last_token_logits(tiny_llama.model, encode(tiny_llama.tokenizer, [f.prompt for f in athletes]), ids).argmax(-1)
    expected = [athletes.answers[int(t)] == f.target_true for t, f in zip(top, athletes, strict=True)]
    assert [r.correct == 1.0 for r in rows] == expected
    assert all(r.n_prompts == 1 for r in rows)


def test_mcq_and_qa_are_scored_on_their_own_tokens(tiny_llama, athletes):
    letter = FormatStyle(mcq_format="letter-1shot")
    results = evaluate_facts(tiny_llama, athletes, ("qa", "mcq"), seed=3, style=letter)
    mcq = [r for r in results.rows if r.format == "mcq"]
    for row, fact in list(zip(mcq, athletes, strict=True))[:4]:
        probs = letter_probs(tiny_llama, build_format(athletes.subset([fact]), "mcq", 3, letter).items[0].prompts[0], 4)
        assert row.p_true == pytest.approx(float(probs[row.options.index(fact.target_true.strip())]), abs=1e-5)
        assert row.p_new == pytest.approx(float(probs[row.options.index(fact.target_new.strip())]), abs=1e-5)
        assert row.correct == float(int(probs.argmax()) == row.options.index(fact.target_true.strip()))
    qa = [r for r in results.rows if r.format == "qa"]
    prompts = [f"{PAPER_SYSTEM_SPORTS} Question: What sport does Tiger Woods play? Answer: golf\n"
               f"Question: {f.question} Answer:" for f in athletes]
    p_true, _ = answer_probs(tiny_llama.model, tiny_llama.tokenizer, athletes, prompts=prompts)
    assert [r.p_true for r in qa] == pytest.approx(p_true.tolist(), abs=1e-5)
    agg = results.aggregates()
    assert agg["mcq"]["p_true"] == pytest.approx(sum(r.p_true for r in mcq) / len(mcq))
    assert agg["mcq"]["n"] == len(athletes) and agg["mcq"]["n_missing"] == 0


@pytest.fixture(scope="module")
def open_facts() -> FactSet:
    full = Fact("f1", "Zed", "The mother tongue of Zed is", " French", " English", "P103",
                paraphrases=("Zed speaks the language", "Zed, a native"),
                neighborhood=("The mother tongue of Yan is", "The mother tongue of Bo is", "Ann speaks"),
                question="What is the mother tongue of Zed?", mc_choices=("French", "English", "Spanish", "Italian"))
    bare = Fact("f2", "Yan", "The mother tongue of Yan is", " English", " French", "P103")
    return FactSet("open", (full, bare), None)


def full_vocab_probs(lm, prompts: list[str], answer: str) -> list[float]:
    token = answer_token_id(lm.tokenizer, answer)
    with torch.no_grad():
        return last_token_logits(lm.model, encode(lm.tokenizer, prompts)).softmax(-1)[:, token].tolist()


def test_open_vocabulary_formats_and_missing_facts(tiny_llama, open_facts):
    formats = ("train", "qa", "mcq", "paraphrase", "neighborhood")
    results = evaluate_facts(tiny_llama, open_facts, formats)
    assert results.missing == {"train": [], "qa": ["f2"], "mcq": ["f2"], "paraphrase": ["f2"], "neighborhood": ["f2"]}
    assert len(results.notes) == 4
    agg = results.aggregates()
    assert agg["paraphrase"]["n"] == 1 and agg["paraphrase"]["n_missing"] == 1
    row = {(r.id, r.format): r for r in results.rows}
    full = open_facts.facts[0]
    para = full_vocab_probs(tiny_llama, list(full.paraphrases), " French")
    assert row["f1", "paraphrase"].p_true == pytest.approx(sum(para) / 2, rel=1e-4)
    assert row["f1", "paraphrase"].n_prompts == 2
    neigh_new = full_vocab_probs(tiny_llama, list(full.neighborhood), " English")
    assert row["f1", "neighborhood"].p_new == pytest.approx(sum(neigh_new) / 3, rel=1e-4)
    assert row["f2", "train"].p_true == pytest.approx(full_vocab_probs(tiny_llama, [open_facts.facts[1].prompt], " English")[0], rel=1e-4)
    french = answer_token_id(tiny_llama.tokenizer, " French")
    with torch.no_grad():
        top = last_token_logits(tiny_llama.model, encode(tiny_llama.tokenizer, list(full.paraphrases))).argmax(-1)
    assert row["f1", "paraphrase"].correct == pytest.approx(float((top == french).float().mean()))
    assert row["f1", "paraphrase"].edited == pytest.approx(
        float((top == answer_token_id(tiny_llama.tokenizer, " English")).float().mean()))
    assert set(row["f1", "mcq"].options) == set(full.mc_choices)


def test_bad_formats_and_answers_are_refused(tiny_llama, athletes):
    with pytest.raises(FactDataError, match="unknown format"):
        evaluate_facts(tiny_llama, athletes, ("cloze",))
    odd = athletes.subset([athletes.facts[0].with_target(" tennis")])
    with pytest.raises(FactDataError, match="not in the answer set"):
        evaluate_facts(tiny_llama, odd, ("train",))


def test_lm_loss_matches_the_model_own_loss_on_the_held_out_part(tiny_llama):
    windows = general_windows(tiny_llama.tokenizer, length=32, n=3, seed=1, part="eval")
    assert windows.shape == (3, 32)
    assert torch.equal(windows, general_windows(tiny_llama.tokenizer, length=32, n=3, seed=1, part="eval"))
    assert not torch.equal(windows, general_windows(tiny_llama.tokenizer, length=32, n=3, seed=2, part="eval"))
    with torch.no_grad():
        ours = next_token_loss(tiny_llama.model, windows, position_chunk=5)
        reference = tiny_llama.model(input_ids=windows, labels=windows).loss
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    result = lm_loss(tiny_llama, n_windows=3, length=32, seed=1)
    assert result["loss"] == pytest.approx(float(reference), rel=1e-5)
    assert result["perplexity"] == pytest.approx(float(torch.exp(reference)), rel=1e-4)
    assert (result["part"], result["n_windows"], result["window_length"]) == ("eval", 3, 32)
    on_training_text = lm_loss(tiny_llama, n_windows=3, length=32, seed=1, part="train")
    assert on_training_text["part"] == "train" and on_training_text["loss"] != pytest.approx(result["loss"], rel=1e-3)


def test_mmlu_fixture_reads_the_same_in_every_layout(tmp_path):
    questions = load_mmlu(MMLU)
    assert len(questions) == 10
    assert questions[3].choices == ("Atlantic", "Indian", "Arctic", "Pacific") and questions[3].answer == 3
    frame = pd.read_csv(MMLU)
    frame["choices"] = [json.loads(c) for c in frame["choices"]]
    frame.to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "m.parquet")
    assert load_mmlu(tmp_path / "m.jsonl") == questions == load_mmlu(tmp_path / "m.parquet")
    frame["answer"] = [LETTERS[a] for a in frame["answer"]]
    frame.to_json(tmp_path / "letters.jsonl", orient="records", lines=True)
    assert load_mmlu(tmp_path / "letters.jsonl") == questions
    frame["answer"] = 7
    frame.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(FactDataError, match="out of range"):
        load_mmlu(tmp_path / "bad.jsonl")
    with pytest.raises(FactDataError, match="missing column"):
        frame.drop(columns="subject").to_json(tmp_path / "cols.jsonl", orient="records", lines=True)
        load_mmlu(tmp_path / "cols.jsonl")
    with pytest.raises(FactDataError, match="no such MMLU file"):
        load_mmlu(tmp_path / "absent.csv")


def test_mmlu_shots_are_seeded_other_questions_of_the_subject_first():
    questions = load_mmlu(MMLU)
    shots = choose_shots(questions, 0, 3, seed=0)
    assert questions[0] not in shots
    assert [s.subject for s in shots[:2]] == ["elementary_mathematics"] * 2  # the two others of its subject
    assert shots == choose_shots(questions, 0, 3, seed=0)
    prompt = mmlu_prompt(questions[0], shots[:1])
    assert prompt.startswith("The following are multiple choice questions (with answers) about elementary mathematics.")
    assert prompt.endswith("What is 7 + 5?\nA. 10\nB. 11\nC. 12\nD. 13\nAnswer:")


def test_mmlu_eval_scores_the_correct_letter(tiny_llama):
    result = mmlu_eval(tiny_llama, MMLU, shots=2, seed=0)
    questions = load_mmlu(MMLU)
    manual = [letter_probs(tiny_llama, mmlu_prompt(q, choose_shots(questions, i, 2, 0)), 4) for i, q in enumerate(questions)]
    assert result["p_correct"] == pytest.approx(sum(float(p[q.answer]) for p, q in zip(manual, questions, strict=True)) / 10, abs=1e-5)
    assert result["accuracy"] == pytest.approx(sum(int(p.argmax()) == q.answer for p, q in zip(manual, questions, strict=True)) / 10)
    assert result["n"] == 10 and result["chance"] == 0.25 and result["shots"] == 2
    limited = mmlu_eval(tiny_llama, MMLU, shots=0, limit=4, seed=0)
    assert limited["n"] == 4
    with pytest.raises(MechunlearnError, match="more than"):
        mmlu_eval(tiny_llama, MMLU, shots=10)


def test_eval_config_from_plain_values():
    config = EvalConfig.from_dict({"formats": ["train"], "attacks": ["relearn"], "relearn": {"steps": 3, "eval_formats": ["train"]},
                                   "probe": {"layers": [0, 2]}})
    assert config.relearn.steps == 3 and config.relearn.rank == 512 and config.probe.layers == (0, 2)
    seeded = EvalConfig.from_dict({"seed": 4, "probe": {"seed": 1}})
    assert (seeded.seed, seeded.relearn.seed, seeded.softprompt.seed, seeded.probe.seed) == (4, 4, 4, 1)
    with pytest.raises(MechunlearnError, match="unknown evaluation setting"):
        EvalConfig.from_dict({"format": ["train"]})
    with pytest.raises(MechunlearnError, match="unknown relearn setting"):
        EvalConfig.from_dict({"relearn": {"epochs": 3}})
    with pytest.raises(MechunlearnError, match="unknown attack"):
        EvalConfig(attacks=("jailbreak",))


@pytest.fixture(scope="module")
def athlete_split():
    facts = load_facts("sports")
    return split_facts(facts.subset(random.Random(1).sample(facts.facts, 40)), forget=6, seed=0)


def test_evaluate_run_record_and_files(tiny_llama, athlete_split, tmp_path):
    config = EvalConfig(formats=("train", "mcq"), attacks=("probe",), lm_windows=2, mmlu_path=str(MMLU), mmlu_limit=3)
    config.probe.layers = (2,)  # in the upper half of the 4 layers: the headline is that layer's value
    result = evaluate_run(tiny_llama, athlete_split, config=config)
    n_rows = (len(athlete_split.forget_eval) + len(athlete_split.maintain_test)) * 2
    assert len(result.rows) == n_rows
    agg = result.aggregates
    assert agg["forget.mcq.n"] == 6 and agg["maintain.train.n"] == len(athlete_split.maintain_test)
    assert agg["forget.train.err"] == pytest.approx(1 - agg["forget.train.p_true"])
    assert agg["mmlu.acc"] == result.side_effects["mmlu"]["accuracy"]
    assert agg["lm_loss"] == result.side_effects["lm_loss"]["loss"]
    probe = result.attacks["probe"]
    assert agg["probe.truth"] == probe["reads_true"] == probe["layers"][0]["reads_true"] and probe["headline_layers"] == [2]
    assert result.split["forget"] == [f.id for f in athlete_split.forget]
    mcq_rows = [r for r in result.rows if r["format"] == "mcq"]
    assert all(len(r["options"].split(" | ")) == 4 for r in mcq_rows)  # the shuffle is logged

    other = evaluate_run(tiny_model("llama", seed=1), athlete_split, config=EvalConfig(formats=("train",), lm_windows=2))
    against = compare_runs(result, other)["aggregates"]
    for name in ("forget.train.p_true", "maintain.train.accuracy", "lm_loss"):
        assert against[name] == {"base": agg[name], "edited": other.aggregates[name],
                                 "delta": pytest.approx(other.aggregates[name] - agg[name])}
    assert against["forget.train.p_true"]["delta"] != 0 and against["lm_loss"]["delta"] != 0
    assert against["maintain.mcq.p_true"] == {"base": agg["maintain.mcq.p_true"], "edited": None, "delta": None}
    compared = compare_runs(result, result)
    alone = compare_runs(None, result)
    assert alone["aggregates"]["lm_loss"] == {"base": None, "edited": agg["lm_loss"], "delta": None}
    assert {r["model"] for r in alone["rows"]} == {"edited"}
    json_path, csv_path = write_results(compared, tmp_path / "eval.json")
    loaded = json.loads(json_path.read_text())
    assert loaded["aggregates"]["forget.train.p_true"]["base"] == pytest.approx(agg["forget.train.p_true"])
    json.dumps(loaded, allow_nan=False)
    rows = pd.read_csv(csv_path)
    assert len(rows) == 2 * n_rows
    assert list(rows.columns[:4]) == ["model", "set", "format", "id"]


def test_a_recorded_split_restores_category_targets():
    facts = load_facts("sports")
    split = split_facts(facts, mode="category", category="basketball", new_target="golf", seed=3)
    record = json.loads(json.dumps(split.to_json()))
    for entry in (record, {k: v for k, v in record.items() if k != "targets"}):  # older logs
        rebuilt = split_from_facts(facts, entry)
        for key in ("forget", "forget_eval", "maintain_train", "maintain_test"):
            assert getattr(rebuilt, key).facts == getattr(split, key).facts
        assert {f.target_new for f in rebuilt.forget_eval} == {" golf"}


def test_a_recorded_sequential_split_joins_its_blocks():
    facts = load_facts("sports")
    whole = split_facts(facts, forget=8, seed=2)
    blocks = [{**whole.to_json(), "forget": ids, "forget_eval": ids, "targets": {}}
              for ids in ([f.id for f in whole.forget][:4], [f.id for f in whole.forget][4:])]
    joined = split_from_facts(facts, blocks)
    assert [f.id for f in joined.forget_eval] == [f.id for f in whole.forget]
    assert joined.maintain_test.facts == whole.maintain_test.facts
    assert joined.rule.startswith("2 sequential blocks")


def test_cli_evaluates_model_and_base_from_a_training_log(tiny_llama, athlete_split, tmp_path):
    from mechunlearn.cli.app import app

    folder = tmp_path / "tiny"  # laid out like an edit's output folder: model/ and train_log.json
    tiny_llama.model.save_pretrained(folder / "model")
    tiny_llama.tokenizer.save_pretrained(folder / "model")
    log = folder / "train_log.json"
    base = tmp_path / "base"  # the "unedited" model: other weights
    other = tiny_model("llama", seed=1)
    other.model.save_pretrained(base)
    other.tokenizer.save_pretrained(base)
    log.write_text(json.dumps({"model": str(base), "facts": {"dataset": "sports", "data": None, "seed": 0},
                               "split": athlete_split.to_json()}))
    settings = tmp_path / "eval.yaml"
    settings.write_text(yaml.safe_dump({"lm_windows": 2, "probe": {"layers": [0, 3]}}))
    out = tmp_path / "out" / "eval.json"
    args = ["evaluate", "--model", str(folder), "--formats", "train,qa",
            "--attacks", "probe", "--config", str(settings), "--out", str(out)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert result["command"] == {"model": str(folder / "model"), "base": str(base), "forget_from": str(log)}
    p_true = result["aggregates"]["forget.train.p_true"]
    assert p_true["delta"] == pytest.approx(p_true["edited"] - p_true["base"]) and p_true["delta"] != 0
    assert result["base"]["model"] == str(base) and result["edited"]["model"] == str(folder / "model")
    assert [r["layer"] for r in result["edited"]["attacks"]["probe"]["layers"]] == [0, 3]
    assert result["edited"]["config"]["lm_windows"] == 2
    assert len(pd.read_csv(out.with_suffix(".csv"))) == 2 * 2 * (6 + len(athlete_split.maintain_test))
    bad = CliRunner().invoke(app, [*args[:5], "--attacks", "jailbreak", "--out", str(out)])
    assert isinstance(bad.exception, MechunlearnError)


def test_cli_without_a_log_splits_the_known_facts_and_can_skip_the_base(tiny_llama, tmp_path):
    from mechunlearn.cli.app import app

    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "eval.json"
    run = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--base", "none", "--threshold", "0",
                                   "--forget", "4", "--formats", "train", "--seed", "3", "--out", str(out)])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert result["base"] is None and result["command"]["base"] is None
    assert result["edited"]["split"]["sizes"]["forget"] == 4 and result["edited"]["split"]["seed"] == 3
    assert result["aggregates"]["forget.train.p_true"]["base"] is None
    assert {r["model"] for r in result["rows"]} == {"edited"}
