"""What the attacks share: the two halves of the edited facts, a private copy of the model,
last-token targets, and seeded randomness that leaves the global generators alone."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet, Split, halves
from mechunlearn.models.loading import LoadedModel, from_model
from mechunlearn.models.scoring import answer_tokens, fact_answer_ids


def attack_halves(split: Split, seed: int = 0) -> tuple[FactSet, FactSet, str]:
    """The edited facts an attack trains on, and those it is evaluated on.

    When the edit was trained and evaluated on the same facts, they are cut into two seeded
    halves (the first is trained on). When the edit was evaluated on held-out facts (a whole
    category), the attack trains on the facts the edit trained on and is evaluated on the
    held-out ones."""
    forget_ids = [f.id for f in split.forget]
    eval_ids = [f.id for f in split.forget_eval]
    if set(forget_ids) & set(eval_ids):
        if len(split.forget_eval) < 2:
            raise MechunlearnError(f"an attack needs at least 2 edited facts to split in halves, got {len(split.forget_eval)}")
        train, held_out = halves(split.forget_eval, seed)
        return train, held_out, f"seeded halves (seed {seed}) of the {len(split.forget_eval)} edited facts"
    return split.forget, split.forget_eval, "the facts the edit trained on; evaluated on its held-out facts"


def model_copy(lm: LoadedModel) -> LoadedModel:
    """A private deep copy of the model (sharing the tokenizer)."""
    model = copy.deepcopy(lm.model)
    return from_model(model, lm.tokenizer, f"{lm.spec} (attack copy)")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's random state."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def true_token_ids(tokenizer, facts: FactSet) -> torch.Tensor:
    return torch.tensor(fact_answer_ids(tokenizer, facts, "true"))


def answer_columns(tokenizer, facts: FactSet) -> tuple[list[int], torch.Tensor]:
    """For a closed set: the answer token ids and each fact's true answer as a column index."""
    tokens = answer_tokens(tokenizer, facts)
    return tokens.answers, tokens.true_column
