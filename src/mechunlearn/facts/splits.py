"""Seeded splits: the facts to forget or edit, and the maintain set (train/test)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mechunlearn.errors import FactDataError
from mechunlearn.facts.records import Fact, FactSet


@dataclass(frozen=True)
class Split:
    forget: FactSet  # edited / unlearned, trained on
    forget_eval: FactSet  # evaluated (the same facts, or the held-out half of a category)
    maintain_train: FactSet
    maintain_test: FactSet
    seed: int
    rule: str  # for people: how the facts were chosen
    mode: str  # for code: "first", "random", "category", "sequential" (blocks), "validation" (a sweep's carve)

    def with_examples(self, examples) -> Split:
        """The split with ``examples`` (solved QA examples, see :func:`with_examples`) on each fact set."""
        return Split(*(getattr(self, k).with_examples(examples) for k in
                       ("forget", "forget_eval", "maintain_train", "maintain_test")), self.seed, self.rule,
                     self.mode)

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("forget", "forget_eval", "maintain_train", "maintain_test")}

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "rule": self.rule,
            **{k: [f.id for f in getattr(self, k)] for k in ("forget", "forget_eval", "maintain_train", "maintain_test")},
            # the edit targets of the edited facts (a category edit overrides them, e.g. " golf")
            "targets": {f.id: f.target_new for s in (self.forget, self.forget_eval) for f in s},
        }


def _shuffled(items, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def halves(facts: FactSet, seed: int = 0) -> tuple[FactSet, FactSet]:
    """Two seeded halves (the first gets the extra fact when the count is odd)."""
    if len(facts) < 2:
        raise FactDataError(f"need at least 2 facts to split into halves, got {len(facts)}")
    order = _shuffled(facts.facts, seed)
    mid = (len(order) + 1) // 2
    return facts.subset(order[:mid]), facts.subset(order[mid:])


def split_facts(
    facts: FactSet,
    forget: int | None = 16,
    mode: str = "random",
    category: str | None = None,
    new_target: str | None = None,
    maintain_test_fraction: float = 0.2,
    seed: int = 0,
    relation: str | None = None,
) -> Split:
    """Choose the facts to forget/edit and split the rest 80/20 into maintain train/test.

    ``mode``: ``first`` (the first N), ``random`` (seeded N), or ``category`` (every fact whose
    true answer is ``category``: trained on one half, evaluated on the held-out half; with
    ``new_target`` as the edit target, e.g. " golf"). ``relation``: the edited facts are drawn
    from that relation's facts only; every other fact is maintained, and the maintain test set
    takes its share of each relation (the other relations' are the unrelated facts).

    Each fact set of the split carries one solved question/answer example per relation, drawn
    from the maintain-train facts (never evaluated): see :func:`with_examples`."""
    pool = facts.of_relation(relation)
    if mode == "category":
        if not category:
            raise FactDataError("mode 'category' needs a category (a true answer, e.g. basketball)")
        chosen = [f for f in pool if f.target_true.strip() == category.strip()]
        if len(chosen) < 2:
            raise FactDataError(f"only {len(chosen)} facts have the answer {category!r}"
                                + (f" in the relation {relation!r}" if relation is not None else ""))
        if new_target:
            chosen = [f.with_target(new_target if new_target.startswith(" ") else " " + new_target) for f in chosen]
        train, held_out = halves(facts.subset(chosen), seed)
        taken = {f.id for f in chosen}
        rest = [f for f in facts if f.id not in taken]
        rule = f"category {category!r} -> {new_target!r}: train on a seeded half, evaluate the other"
    else:
        if not forget or forget < 1:
            raise FactDataError(f"the forget set must have at least 1 fact, got {forget}")
        if forget >= len(facts):
            raise FactDataError(f"asked to forget {forget} of only {len(facts)} facts: nothing left to maintain")
        if relation is not None and forget > len(pool):
            raise FactDataError(f"asked to forget {forget} facts of the relation {relation!r}, which has only "
                                f"{len(pool)}; forget fewer")
        order = list(pool.facts) if mode == "first" else _shuffled(pool.facts, seed)
        if mode not in ("first", "random"):
            raise FactDataError(f"unknown split mode {mode!r}: first, random or category")
        train = held_out = facts.subset(order[:forget], f"{facts.name} forget")
        taken = {f.id for f in train}
        rest = order[forget:] if relation is None else [f for f in facts if f.id not in taken]
        rule = f"{mode} {forget}"
    if relation is not None:
        rule += f" of the relation {relation!r}"
    if not rest:
        raise FactDataError("no facts left for the maintain set")
    if relation is None:
        test, train_m = _test_cut(_shuffled(rest, seed + 1), maintain_test_fraction)
    else:  # each relation's share, so that the maintain test set holds facts of the other relations
        test, train_m = [], []
        for r in sorted({f.relation for f in rest}):
            t, m = _test_cut(_shuffled([f for f in rest if f.relation == r], seed + 1), maintain_test_fraction)
            test += t
            train_m += m
    if not train_m:
        raise FactDataError("no facts left for the maintain training set")
    return with_examples(Split(
        forget=train,
        forget_eval=held_out,
        maintain_train=facts.subset(train_m, f"{facts.name} maintain train"),
        maintain_test=facts.subset(test or train_m, f"{facts.name} maintain test"),
        seed=seed,
        rule=rule,
        mode=mode,
    ))


def _test_cut(rest: list, fraction: float) -> tuple[list, list]:
    n_test = max(1, round(len(rest) * fraction)) if len(rest) > 1 else 0
    return rest[:n_test], rest[n_test:]


EXAMPLE_RULE = ("the solved example of a question/answer prompt is a fact of the asked fact's relation that is "
                "never evaluated: the first with a question among the seed's localization facts (set aside "
                "before the split), else among the maintain-train facts; none when the relation has no such fact")


def with_examples(split: Split, set_aside=()) -> Split:
    """``split`` with one solved QA example per relation attached to each of its fact sets: the
    first fact of the relation that has a question among ``set_aside`` (facts no one evaluates,
    such as a run's localization facts), else among the maintain-train facts (trained on to be
    kept, never evaluated). Never an edited or evaluated fact of the split."""
    evaluated = {f.id for s in (split.forget, split.forget_eval, split.maintain_test) for f in s}
    chosen: dict[str, Fact] = {}
    for f in [*set_aside, *split.maintain_train]:
        if f.question and f.id not in evaluated:
            chosen.setdefault(f.relation, f)
    return split.with_examples(tuple(chosen[r] for r in sorted(chosen)))


def sequential_blocks(facts: FactSet, n_blocks: int, block_size: int, seed: int = 0,
                      maintain_test_fraction: float = 0.2, relation: str | None = None) -> list[Split]:
    """``n_blocks`` disjoint seeded blocks of ``block_size`` facts to edit one after another;
    all blocks share one maintain train/test split of the remaining facts."""
    if n_blocks < 1 or block_size < 1:
        raise FactDataError(f"need at least one block of at least one fact, got {n_blocks} x {block_size}")
    whole = split_facts(facts, forget=n_blocks * block_size, mode="random",
                        maintain_test_fraction=maintain_test_fraction, seed=seed, relation=relation)
    chosen = list(whole.forget)
    blocks = []
    for b in range(n_blocks):
        block = whole.forget.subset(chosen[b * block_size:(b + 1) * block_size], f"{facts.name} block {b + 1}")
        blocks.append(Split(block, block, whole.maintain_train, whole.maintain_test, seed,
                            f"sequential block {b + 1}/{n_blocks} of {block_size} (seed {seed})", "sequential"))
    return blocks


_CATEGORY_RULE = re.compile(r"^category '(.*)' -> '(.*)':")


def split_from_facts(facts: FactSet, data: dict | list[dict]) -> Split:
    """Rebuild a split from ``Split.to_json()`` output and the fact set its ids come from. The
    edited facts get the recorded ``targets`` (older records without them: the target named in a
    category rule). A list (the blocks of a sequential edit, sharing one maintain split) gives
    one split whose edited facts are those of every block."""
    if isinstance(data, list):
        if not data:
            raise FactDataError("empty list of split records")
        blocks = [split_from_facts(facts, d) for d in data]
        first = blocks[0]
        forget = list({f.id: f for b in blocks for f in b.forget}.values())
        forget_eval = list({f.id: f for b in blocks for f in b.forget_eval}.values())
        return Split(first.forget.subset(forget), first.forget_eval.subset(forget_eval), first.maintain_train,
                     first.maintain_test, first.seed, f"{len(blocks)} sequential blocks: " + "; ".join(b.rule for b in blocks),
                     "sequential")
    targets = dict(data.get("targets") or {})
    if not targets:
        m = _CATEGORY_RULE.match(str(data.get("rule", "")))
        if m:
            target = m.group(2) if m.group(2).startswith(" ") else " " + m.group(2)
            targets = {i: target for k in ("forget", "forget_eval") for i in data[k]}

    def part(key: str, edited: bool) -> FactSet:
        ids = data.get(key)
        if ids is None:
            raise FactDataError(f"split record has no {key!r} list")
        subset = facts.by_id(ids).subset(facts.by_id(ids).facts, f"{facts.name} {key.replace('_', ' ')}")
        if edited and targets:
            subset = subset.subset([f.with_target(targets[f.id]) if targets.get(f.id) else f for f in subset])
        return subset

    return with_examples(Split(
        forget=part("forget", True),
        forget_eval=part("forget_eval", True),
        maintain_train=part("maintain_train", False),
        maintain_test=part("maintain_test", False),
        seed=int(data.get("seed", 0)),
        rule=str(data.get("rule", "")),
        mode=_recorded_mode(str(data.get("rule", ""))),
    ))


def _recorded_mode(rule: str) -> str:
    """The mode of a split record (records hold the rule only; each mode's rule starts with its name)."""
    first_word = rule.split(" ", 1)[0]
    return first_word if first_word in ("first", "random", "category", "sequential") else "recorded"
