"""General text: disjoint training/evaluation parts, the training term reads only the training
part, and maintain facts of another relation reported on their own."""

import random

import pytest
import torch

from mechunlearn.edit import EditConfig, train
from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate import EvalConfig, evaluate_facts, evaluate_run
from mechunlearn.facts import Fact, FactSet, Split, load_facts, split_facts
from mechunlearn.facts.general_text import (
    EVAL_EVERY,
    general_windows,
    load_general_text,
    part_windows,
    split_paragraphs,
    token_chunks,
)
from mechunlearn.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def ngrams(windows: torch.Tensor, n: int) -> set[tuple[int, ...]]:
    """Every run of ``n`` tokens in the windows, leaving out the BOS each window starts with."""
    rows = windows[:, 1:].tolist()
    return {tuple(row[i:i + n]) for row in rows for i in range(len(row) - n + 1)}


def random_prose(n_paragraphs: int, seed: int = 0) -> list[str]:
    """Paragraphs of random letters: two of them share no run of a few tokens by chance."""
    rng = random.Random(seed)
    return [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
                     for _ in range(40)) for _ in range(n_paragraphs)]


def test_every_fifth_distinct_paragraph_is_held_out():
    paragraphs = [f"paragraph {i}" for i in range(12)]
    parts = split_paragraphs(paragraphs)
    assert parts.eval == ["paragraph 4", "paragraph 9"] and EVAL_EVERY == 5
    assert parts.train == [p for p in paragraphs if p not in parts.eval]
    assert split_paragraphs(["a", "b", "c"]).eval == ["c"]  # fewer than five: the last one
    repeated = split_paragraphs(["a", "b", "c", "d", "a", "e"])  # the repeat of "a" would be held out
    assert repeated.eval == ["e"] and repeated.n_duplicates == 1 and "a" in repeated.train
    with pytest.raises(FactDataError, match="at least 2 different paragraphs"):
        split_paragraphs(["same", "same"])


def test_built_in_text_parts_share_no_run_of_half_a_window(tiny_llama):
    parts = part_windows(tiny_llama.tokenizer, None, 64)
    assert len(parts["eval"]) >= 16 and len(parts["train"]) >= 4 * len(parts["eval"]) - 8
    # a 600-token byte BPE shares short phrases ("in the sixteenth century") between paragraphs;
    # a window of one part holds no 32-token run of the other
    assert not ngrams(parts["eval"], 32) & ngrams(parts["train"], 32)
    whole = token_chunks(tiny_llama.tokenizer, load_general_text(None))
    assert ngrams(parts["eval"], 32) & ngrams(whole, 32)  # the check sees text shared with an unsplit stream


@pytest.mark.integration
def test_built_in_text_parts_share_no_8_gram_with_the_embedded_tokenizer():
    from transformers import AutoTokenizer

    from mechunlearn.models.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    parts = part_windows(tokenizer, None, 64)
    assert len(parts["eval"]) >= 16
    assert not ngrams(parts["eval"], 8) & ngrams(parts["train"], 8)


def test_user_file_parts_are_disjoint_even_with_a_repeated_paragraph(tiny_llama, tmp_path):
    paragraphs = random_prose(10)
    paragraphs.insert(9, paragraphs[0])  # lands on a held-out slot unless repeats are dropped first
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(paragraphs))
    parts = part_windows(tiny_llama.tokenizer, str(path), 16)
    assert len(parts["eval"]) >= 2
    assert not ngrams(parts["eval"], 8) & ngrams(parts["train"], 8)
    drawn = general_windows(tiny_llama.tokenizer, str(path), 16, n=2, seed=3, part="eval")
    assert all(any(torch.equal(row, w) for w in parts["eval"]) for row in drawn)
    with pytest.raises(MechunlearnError, match="unknown general-text part"):
        general_windows(tiny_llama.tokenizer, str(path), 16, part="test")


def test_a_text_too_short_for_both_parts_names_the_file(tiny_llama, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(random_prose(4)) + "\n\ntiny")  # the held-out paragraph is one word
    with pytest.raises(FactDataError, match=r"eval part of .*short\.txt.*fewer than one window of 16"):
        general_windows(tiny_llama.tokenizer, str(path), 16, part="train")


def test_the_training_term_reads_only_training_windows(tmp_path, monkeypatch):
    import mechunlearn.edit.step as step

    lm = tiny_model("llama")
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(random_prose(10, seed=1)))
    parts = {k: {tuple(r) for r in v.tolist()} for k, v in part_windows(lm.tokenizer, str(path), 16).items()}
    seen = []
    original = step.lm_hidden

    def spy(model, input_ids):
        seen.extend(tuple(r) for r in input_ids.tolist())
        return original(model, input_ids)

    monkeypatch.setattr(step, "lm_hidden", spy)
    facts = load_facts("sports")
    split = split_facts(facts.subset(facts.facts[:12]), forget=4, seed=0)
    config = EditConfig(steps=4, lr=1e-3, general_text=str(path), general_length=16, general_batch_size=3,
                        maintain_batch_size=4)
    train(lm, "blocks.1.mlp", split, config, progress=False)
    assert len(seen) == 12
    assert set(seen) <= parts["train"] and not set(seen) & parts["eval"]


RELATIONS = {"sport": ("plays the sport of", [" football", " baseball"]), "city": ("was born in the city of", [" Paris", " Rome"])}


def two_relation_split() -> Split:
    facts = []
    for rel, (phrase, answers) in RELATIONS.items():
        for i in range(10):
            subject = f"Person {rel} {i}"
            facts.append(Fact(f"{rel}{i}", subject, f"{subject} {phrase}", answers[i % 2], relation=phrase,
                              question=f"What about {subject}?"))
    facts = FactSet("two relations", tuple(facts))
    by_id = {f.id: f for f in facts}
    forget = facts.subset([by_id[f"sport{i}"].with_target(" baseball") for i in range(4)])
    maintain_test = facts.subset([by_id[i] for i in ("sport4", "sport5", "city0", "city1", "city2")])
    maintain_train = facts.subset([f for f in facts if f.id not in {*ids(forget), *ids(maintain_test)}])
    return Split(forget, forget, maintain_train, maintain_test, 0, "planted", "random")


def ids(facts: FactSet) -> set[str]:
    return {f.id for f in facts}


def test_unrelated_facts_are_the_maintain_facts_of_other_relations(tiny_llama):
    split = two_relation_split()
    config = EvalConfig(formats=("train", "qa"), lm_windows=2)
    result = evaluate_run(tiny_llama, split, config=config)
    unrelated = result.side_effects["unrelated"]
    assert unrelated["edited_relations"] == ["plays the sport of"] and unrelated["n_facts"] == 3
    others = split.maintain_test.by_id(["city0", "city1", "city2"])
    direct = evaluate_facts(tiny_llama, others, ("train", "qa")).aggregates()
    agg = result.aggregates
    for fmt in ("train", "qa"):
        assert agg[f"unrelated.{fmt}.n"] == 3
        assert agg[f"unrelated.{fmt}.p_true"] == pytest.approx(direct[fmt]["p_true"], rel=1e-5)
        assert agg[f"unrelated.{fmt}.accuracy"] == pytest.approx(direct[fmt]["accuracy"])
    assert agg["unrelated.train.p_true"] != pytest.approx(agg["maintain.train.p_true"], rel=1e-4)
    lm_loss = result.side_effects["lm_loss"]
    assert (lm_loss["part"], lm_loss["n_windows"]) == ("eval", 2)


def test_one_relation_says_so_and_reports_no_unrelated_metric(tiny_llama):
    facts = load_facts("sports")
    split = split_facts(facts.subset(random.Random(0).sample(facts.facts, 12)), forget=4, seed=0)
    result = evaluate_run(tiny_llama, split, config=EvalConfig(formats=("train",), lm_windows=1))
    unrelated = result.side_effects["unrelated"]
    assert unrelated["aggregates"] is None and "no unrelated facts" in unrelated["status"]
    assert unrelated["edited_relations"] == ["plays the sport of"]
    assert not [k for k in result.aggregates if k.startswith("unrelated.")]
