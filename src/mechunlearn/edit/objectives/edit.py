"""Editing: cross-entropy of the last-token logits toward the new target."""

import torch

from mechunlearn.edit.objectives.base import FactLogits, FactObjective, register


def edit_loss(batch: FactLogits, config) -> torch.Tensor:
    return -batch.target_logp()


EDIT = register(FactObjective("edit", "forget", "new", edit_loss, summary="CE toward the edit target"))
