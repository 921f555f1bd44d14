"""Seeded splits: the facts to forget or edit, and the maintain set (train/test)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mechunlearn.errors import FactDataError
from mechunlearn.facts.records import FactSet


@dataclass(frozen=True)
class Split:
    forget: FactSet  # edited / unlearned, trained on
    forget_eval: FactSet  # evaluated (the same facts, or the held-out half of a category)
    maintain_train: FactSet
    maintain_test: FactSet
    seed: int
    rule: str

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
) -> Split:
    """Choose the facts to forget/edit and split the rest 80/20 into maintain train/test.

    ``mode``: ``first`` (the first N), ``random`` (seeded N), or ``category`` (every fact whose
    true answer is ``category``: trained on one half, evaluated on the held-out half; with
    ``new_target`` as the edit target, e.g. " golf")."""
    if mode == "category":
        if not category:
            raise FactDataError("mode 'category' needs a category (a true answer, e.g. basketball)")
        chosen = [f for f in facts if f.target_true.strip() == category.strip()]
        if len(chosen) < 2:
            raise FactDataError(f"only {len(chosen)} facts have the answer {category!r}")
        if new_target:
            chosen = [f.with_target(new_target if new_target.startswith(" ") else " " + new_target) for f in chosen]
        train, held_out = halves(facts.subset(chosen), seed)
        rest = [f for f in facts if f.target_true.strip() != category.strip()]
        rule = f"category {category!r} -> {new_target!r}: train on a seeded half, evaluate the other"
    else:
        if not forget or forget < 1:
            raise FactDataError(f"the forget set must have at least 1 fact, got {forget}")
        if forget >= len(facts):
            raise FactDataError(f"asked to forget {forget} of only {len(facts)} facts: nothing left to maintain")
        order = list(facts.facts) if mode == "first" else _shuffled(facts.facts, seed)
        if mode not in ("first", "random"):
            raise FactDataError(f"unknown split mode {mode!r}: first, random or category")
        train = held_out = facts.subset(order[:forget], f"{facts.name} forget")
        rest = order[forget:]
        rule = f"{mode} {forget}"
    if not rest:
        raise FactDataError("no facts left for the maintain set")
    rest = _shuffled(rest, seed + 1)
    n_test = max(1, round(len(rest) * maintain_test_fraction)) if len(rest) > 1 else 0
    test, train_m = rest[:n_test], rest[n_test:]
    if not train_m:
        raise FactDataError("no facts left for the maintain training set")
    return Split(
        forget=train,
        forget_eval=held_out,
        maintain_train=facts.subset(train_m, f"{facts.name} maintain train"),
        maintain_test=facts.subset(test or train_m, f"{facts.name} maintain test"),
        seed=seed,
        rule=rule,
    )


def sequential_blocks(facts: FactSet, n_blocks: int, block_size: int, seed: int = 0,
                      maintain_test_fraction: float = 0.2) -> list[Split]:
    """``n_blocks`` disjoint seeded blocks of ``block_size`` facts to edit one after another;
    all blocks share one maintain train/test split of the remaining facts."""
    if n_blocks < 1 or block_size < 1:
        raise FactDataError(f"need at least one block of at least one fact, got {n_blocks} x {block_size}")
    whole = split_facts(facts, forget=n_blocks * block_size, mode="random",
                        maintain_test_fraction=maintain_test_fraction, seed=seed)
    chosen = list(whole.forget)
    blocks = []
    for b in range(n_blocks):
        block = whole.forget.subset(chosen[b * block_size:(b + 1) * block_size], f"{facts.name} block {b + 1}")
        blocks.append(Split(block, block, whole.maintain_train, whole.maintain_test, seed,
                            f"sequential block {b + 1}/{n_blocks} of {block_size} (seed {seed})"))
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
                     first.maintain_test, first.seed, f"{len(blocks)} sequential blocks: " + "; ".join(b.rule for b in blocks))
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

    return Split(
        forget=part("forget", True),
        forget_eval=part("forget_eval", True),
        maintain_train=part("maintain_train", False),
        maintain_test=part("maintain_test", False),
        seed=int(data.get("seed", 0)),
        rule=str(data.get("rule", "")),
    )
