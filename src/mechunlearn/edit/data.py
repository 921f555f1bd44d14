"""Training data for the three loss terms: fact prompts with their answer tokens, general-text
windows, and the seeded draw of each step's batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.models.scoring import answer_tokens, fact_answer_ids


@dataclass
class FactTerm:
    """The facts of one loss term: prompts and, per prompt, the index of its answer among the
    columns of the logits the objective sees (a vocabulary id, or a position in the answer set)."""

    prompts: list[str]
    targets: torch.Tensor  # [N] long
    columns: list[int] | None  # vocabulary ids of the logit columns; None = full vocabulary
    reference: torch.Tensor | None = None  # [N] log p(target) before training (NPO)

    def __len__(self) -> int:
        return len(self.prompts)


def fact_term(tokenizer, facts: FactSet, answer: str, over: str = "vocab") -> FactTerm:
    """``answer``: ``true`` or ``new`` (the edit target); ``over``: ``vocab`` or ``answers``
    (a closed answer set only)."""
    if answer == "new":
        missing = [f.id for f in facts if not f.target_new]
        if missing:
            raise FactDataError(f"{len(missing)} facts have no edit target (e.g. {missing[:3]}); editing needs one")
    which = "new" if answer == "new" else "true"
    columns = None
    if over == "answers":
        if not facts.closed:
            raise MechunlearnError(f"{facts.name!r} has no closed answer set: use forget_over='vocab'")
        tokens = answer_tokens(tokenizer, facts)
        outside = [f.id for f, c in zip(facts, tokens.columns(which).tolist(), strict=True) if c < 0]
        if outside:
            raise FactDataError(f"answers of {outside[:3]} are not in the answer set {facts.answers}")
        columns, ids = tokens.answers, tokens.columns(which).tolist()
    else:
        ids = fact_answer_ids(tokenizer, facts, which)
    return FactTerm([f.prompt for f in facts], torch.tensor(ids, dtype=torch.long), columns)


class StepSampler:
    """Seeded batches of indices: every item once per epoch, in a fresh permutation each epoch.
    A batch as large as the data is the whole data every step."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._queue: list[int] = []

    def next(self) -> list[int]:
        if self.batch_size >= self.n:
            return list(range(self.n))
        while len(self._queue) < self.batch_size:
            self._queue += torch.randperm(self.n, generator=self.generator).tolist()
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        return batch


def micro_batches(indices: list[int], rank: int, world: int, n_micro: int) -> list[list[int]]:
    """This process's share of a step's batch, cut into ``n_micro`` micro-batches (some may be
    empty when the batch is small)."""
    local = indices[rank::world]
    return [local[i::n_micro] for i in range(n_micro)]
