"""Prompt formats: the same fact asked in different ways.

Each fact becomes a :class:`FormatItem`: one or more prompts, the continuation that counts as
the true answer, the one that counts as the edit target, and the candidate continuations a
closed-set probability is normalised over (``None``: the full vocabulary).

* ``train``: the fact's training prompt.
* ``qa``: ``{system line}\\nQuestion: {question}\\nAnswer:``, scored on the answer tokens.
* ``mcq``: one fixed solved example, then the fact's question with its options shuffled by a
  seed per fact (``random.Random(f"{seed}:{fact.id}")``), then ``Answer:``; scored on the
  option letters ``" A"``, ``" B"``, ... normalised over the letters shown. P(true) is the
  probability of the true option's letter, P(new) that of the edit target's letter.
* ``paraphrase``: the fact's paraphrase prompts (averaged per fact).
* ``neighborhood``: prompts about other subjects with the same true answer (averaged per
  fact); their "new" answer is still the fact's edit target, which they must not move to.

Facts that a format cannot ask (no question, no options, no paraphrases, no neighbours) are
returned as missing, with their ids, never dropped silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mechunlearn.errors import FactDataError
from mechunlearn.facts import Fact, FactSet

FORMATS = ("train", "qa", "mcq", "paraphrase", "neighborhood")
LETTERS = "ABCDEFGHIJ"

SPORTS_EXAMPLE = ("What sport does Tiger Woods play?", ("football", "golf", "basketball", "baseball"), 1)
GENERAL_EXAMPLE = ("What is the capital city of France?", ("Berlin", "Paris", "Madrid", "Rome"), 1)


@dataclass(frozen=True)
class FormatItem:
    fact_id: str
    prompts: tuple[str, ...]
    true_answer: str  # the continuation that counts as the truth (" football", or " B" in MCQ)
    new_answer: str | None  # the edit target's continuation, None when the fact has none
    candidates: tuple[str, ...] | None  # normalise over these; None = full vocabulary
    options: tuple[str, ...] = ()  # MCQ: the options in the order shown (A, B, ...)


@dataclass(frozen=True)
class FormatPrompts:
    format: str
    items: list[FormatItem]
    missing: list[str]  # ids of facts this format cannot ask


def _qa_header(facts: FactSet) -> str:
    return f"{facts.system}\n" if facts.system else ""


def qa_prompt(facts: FactSet, question: str) -> str:
    return f"{_qa_header(facts)}Question: {question}\nAnswer:"


def mcq_block(question: str, options: tuple[str, ...]) -> str:
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def mcq_example(facts: FactSet) -> str:
    """The one solved example shown before each question (athletes for a sports set)."""
    sports = facts.answers is not None and " golf" in facts.answers
    question, options, answer = SPORTS_EXAMPLE if sports else GENERAL_EXAMPLE
    return f"{mcq_block(question, options)} {LETTERS[answer]}\n\n"


def option_order(fact: Fact, seed: int) -> tuple[str, ...]:
    """The fact's MC options in a seeded order (the same for a fact and seed, whatever the set)."""
    options = list(dict.fromkeys(fact.mc_choices))
    random.Random(f"{seed}:{fact.id}").shuffle(options)
    return tuple(options)


def _check_closed(facts: FactSet) -> None:
    for f in facts:
        if f.target_true not in facts.answers:
            raise FactDataError(f"fact {f.id!r}: true answer {f.target_true!r} is not in the answer set {facts.answers}")
        if f.target_new is not None and f.target_new not in facts.answers:
            raise FactDataError(f"fact {f.id!r}: edit target {f.target_new!r} is not in the answer set {facts.answers}")


def _mcq_item(facts: FactSet, fact: Fact, seed: int) -> FormatItem | None:
    if not fact.question or len(fact.mc_choices) < 2:
        return None
    options = option_order(fact, seed)
    if len(options) > len(LETTERS):
        raise FactDataError(f"fact {fact.id!r} has {len(options)} options; at most {len(LETTERS)} are supported")
    true = fact.target_true.strip()
    if true not in options:
        raise FactDataError(f"fact {fact.id!r}: true answer {true!r} is not among its options {options}")
    new = fact.target_new.strip() if fact.target_new else None
    letter = {o: f" {LETTERS[i]}" for i, o in enumerate(options)}
    prompt = _qa_header(facts) + mcq_example(facts) + mcq_block(fact.question, options)
    return FormatItem(
        fact.id, (prompt,), letter[true], letter.get(new) if new else None,
        tuple(letter.values()), options,
    )


def build_format(facts: FactSet, fmt: str, seed: int = 0) -> FormatPrompts:
    if fmt not in FORMATS:
        raise FactDataError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if facts.closed:
        _check_closed(facts)
    candidates = facts.answers if facts.closed else None
    items, missing = [], []
    for f in facts:
        if fmt == "mcq":
            item = _mcq_item(facts, f, seed)
        else:
            prompts = {
                "train": (f.prompt,),
                "qa": (qa_prompt(facts, f.question),) if f.question else (),
                "paraphrase": tuple(f.paraphrases),
                "neighborhood": tuple(f.neighborhood),
            }[fmt]
            item = FormatItem(f.id, prompts, f.target_true, f.target_new, candidates) if prompts else None
        if item is None:
            missing.append(f.id)
        else:
            items.append(item)
    return FormatPrompts(fmt, items, missing)
