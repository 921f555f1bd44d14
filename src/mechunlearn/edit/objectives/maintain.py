"""Maintain: cross-entropy toward the true answers of the facts that must not change."""

import torch

from mechunlearn.edit.objectives.base import FactLogits, FactObjective, register


def maintain_loss(batch: FactLogits, config) -> torch.Tensor:
    return -batch.target_logp()


MAINTAIN = register(FactObjective("maintain", "maintain", "true", maintain_loss, summary="CE toward the true answer"))
