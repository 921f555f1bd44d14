from dataclasses import replace

import pytest
import torch

from mechunlearn.errors import FactDataError
from mechunlearn.facts import (
    answer_probs,
    filter_known,
    halves,
    load_builtin_athletes,
    load_counterfact,
    load_facts,
    load_sports,
    load_table,
    split_facts,
)
from mechunlearn.facts.loaders import parse_string_list

SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "sports.csv").exists(), reason="../shared/data not present")


def test_builtin_athletes_are_many_and_balanced():
    facts = load_builtin_athletes()
    counts = facts.count_by_answer()
    assert set(counts) == {"football", "baseball", "basketball"}
    assert len(facts) >= 200 and min(counts.values()) >= 60
    f = facts.facts[0]
    assert f.prompt.endswith(f"{f.subject} plays the sport of") and f.target_new != f.target_true
    assert f.target_new.strip() in ("football", "baseball", "basketball")


def test_builtin_edit_targets_are_seeded():
    a, b, c = load_builtin_athletes(0), load_builtin_athletes(0), load_builtin_athletes(1)
    assert [f.target_new for f in a] == [f.target_new for f in b]
    assert [f.target_new for f in a] != [f.target_new for f in c]


@needs_shared
def test_sports_csv_loads_with_its_edit_targets():
    facts = load_sports(SHARED / "sports.csv")
    assert len(facts) == 1559
    assert all(f.target_new.strip() != f.target_true.strip() for f in facts)


@needs_shared
def test_counterfact_parses_lists_and_mc():
    facts = load_counterfact(SHARED / "counterfact_gemma-7b.csv")
    assert len(facts) == 2189 and facts.answers is None
    f = facts.facts[0]
    assert f.subject == "Danielle Darrieux" and f.target_true == " French" and f.target_new == " English"
    assert len(f.paraphrases) == 2 and len(f.neighborhood) == 10
    assert f.neighborhood[0] == "The mother tongue of Léon Blum is"
    assert f.question == "What is the mother tongue of Danielle Darrieux?" and f.mc_choices[0] == "French"
    assert "English" in f.mc_choices
    assert any("2166 of 2189" in n for n in facts.notes)
    # two published questions ask for another answer than their fact's ("Buddhist philosophy" for
    # " Buddhism"): left out and counted, so the MCQ format never scores a wrong letter
    assert any(n.startswith("2 MC questions left out") for n in facts.notes)
    assert all(f.mc_choices[0] == f.target_true.strip() for f in facts if f.mc_choices)


def test_parse_string_list_forms():
    assert parse_string_list("['a b' 'c']") == ("a b", "c")
    assert parse_string_list("['it\\'s'\n 'x']") == ("it's", "x")
    assert parse_string_list('["a", "b"]') == ("a", "b")
    assert parse_string_list("") == ()


def test_missing_column_is_a_clear_error(tmp_path):
    p = tmp_path / "facts.csv"
    p.write_text("subject,prompt\nX,X is\n")
    with pytest.raises(FactDataError, match="target_true"):
        load_table(p)


def test_empty_fact_set_is_an_error(tmp_path):
    p = tmp_path / "facts.csv"
    p.write_text("subject,prompt,target_true\n")
    with pytest.raises(FactDataError, match="empty"):
        load_table(p)


def test_generic_table_jsonl(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"subject": "Paris", "prompt": "Paris is the capital of", "target_true": "France", "paraphrases": ["The capital Paris is in"]}\n')
    facts = load_table(p)
    assert facts.facts[0].target_true == " France" and facts.facts[0].paraphrases == ("The capital Paris is in",)


def test_unknown_dataset_and_missing_file():
    with pytest.raises(FactDataError):
        load_facts("nope")
    with pytest.raises(FactDataError, match="no such data file"):
        load_facts("sports", "/nonexistent.csv")


def test_splits_are_seeded_and_disjoint():
    facts = load_builtin_athletes()
    s1, s2 = split_facts(facts, forget=16, seed=3), split_facts(facts, forget=16, seed=3)
    assert s1.to_json() == s2.to_json()
    assert s1.to_json() != split_facts(facts, forget=16, seed=4).to_json()
    ids = [set(f.id for f in getattr(s1, k)) for k in ("forget", "maintain_train", "maintain_test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0]) == 16 and sum(map(len, ids)) == len(facts)
    assert abs(len(ids[2]) / (len(ids[1]) + len(ids[2])) - 0.2) < 0.01


def test_category_split_trains_on_half_and_targets_new_answer():
    facts = load_builtin_athletes()
    s = split_facts(facts, mode="category", category="basketball", new_target="golf", seed=0)
    n = facts.count_by_answer()["basketball"]
    assert len(s.forget) + len(s.forget_eval) == n
    assert not {f.id for f in s.forget} & {f.id for f in s.forget_eval}
    assert all(f.target_new == " golf" for f in s.forget_eval)
    assert all(f.target_true != " basketball" for f in s.maintain_train)


def test_a_split_records_its_mode_for_code_and_its_rule_for_people():
    from mechunlearn.edit.sweep import validation_split
    from mechunlearn.facts.splits import sequential_blocks, split_from_facts

    facts = load_builtin_athletes()
    category = split_facts(facts, mode="category", category="basketball", new_target="golf", seed=0)
    assert [split_facts(facts, forget=8, mode=m).mode for m in ("first", "random")] == ["first", "random"]
    assert category.mode == "category" and category.rule.startswith("category 'basketball'")
    assert [b.mode for b in sequential_blocks(facts, 2, 4)] == ["sequential", "sequential"]
    assert split_from_facts(facts, category.to_json()).mode == "category"
    # the sweep's carve takes the category's edit target from the mode, not from the rule's words
    carve = validation_split(category)
    assert carve.mode == "validation" and {f.target_new for f in carve.forget} == {" golf"}
    worded = replace(category, rule="random 8, not a category edit", mode="random")
    assert " golf" not in {f.target_new for f in validation_split(worded).forget}


def test_split_errors():
    facts = load_builtin_athletes()
    with pytest.raises(FactDataError):
        split_facts(facts, forget=0)
    with pytest.raises(FactDataError):
        split_facts(facts, forget=len(facts))
    with pytest.raises(FactDataError):
        halves(facts.subset(facts.facts[:1]))


def test_answer_probs_batched_equals_unbatched(tiny_llama):
    facts = load_builtin_athletes().subset(load_builtin_athletes().facts[:6])
    p_batch, n_batch = answer_probs(tiny_llama.model, tiny_llama.tokenizer, facts, batch_size=6)
    p_one, n_one = answer_probs(tiny_llama.model, tiny_llama.tokenizer, facts, batch_size=1)
    torch.testing.assert_close(p_batch, p_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(n_batch, n_one, atol=1e-5, rtol=0)
    assert torch.all((p_batch > 0) & (p_batch < 1))


def test_filter_known_threshold(tiny_llama):
    facts = load_builtin_athletes().subset(load_builtin_athletes().facts[:20])
    assert facts.relation_answers == (" football", " baseball", " basketball")
    p, _ = answer_probs(tiny_llama.model, tiny_llama.tokenizer, replace(facts, answers=facts.relation_answers))
    p4, _ = answer_probs(tiny_llama.model, tiny_llama.tokenizer, facts)
    assert torch.all(p > p4)  # golf takes no mass when knowing is judged
    cut = float(p.median())
    report = filter_known(tiny_llama.model, tiny_llama.tokenizer, facts, threshold=cut)
    assert len(report.known) == int((p > cut).sum())
    with pytest.raises(FactDataError, match="knows none"):
        filter_known(tiny_llama.model, tiny_llama.tokenizer, facts, threshold=1.0)


def test_facts_whose_edit_shares_the_answers_first_token_are_dropped(tiny_llama, tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("id,subject,prompt,target_true,target_new\n"
                 "a,Paris,Paris is in, France, Spain\nb,Rome,Rome is in, Italy, Italy\n")
    report = filter_known(tiny_llama.model, tiny_llama.tokenizer, load_table(p), threshold=0.0)
    assert [f.id for f in report.known] == ["a"]
    assert any(n.startswith("1 facts dropped: true answer and edit target share their first token") and "b" in n
               for n in report.notes)


def test_answer_that_tokenizes_to_nothing_names_the_fact(tiny_llama, tmp_path):
    p = tmp_path / "f.csv"
    # an empty answer is refused on load: blank it afterwards
    p.write_text("id,subject,prompt,target_true\nq1,Paris,Paris is in,France\n")
    facts = load_table(p)
    facts = facts.subset([facts.facts[0].__class__(**{**facts.facts[0].__dict__, "target_true": ""})])
    with pytest.raises(FactDataError, match="q1"):
        answer_probs(tiny_llama.model, tiny_llama.tokenizer, facts)


@pytest.mark.integration
def test_embedded_model_knows_hundreds_of_builtin_athletes(gemma_known_athletes):
    counts = gemma_known_athletes.count_by_answer()
    print("known built-in athletes:", counts)
    assert len(gemma_known_athletes) >= 200
    assert min(counts.values()) >= 50
