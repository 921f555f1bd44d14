"""Gradient ascent: maximise the cross-entropy of the true answer (unbounded below)."""

import torch

from mechunlearn.edit.objectives.base import FactLogits, FactObjective, register


def grad_ascent_loss(batch: FactLogits, config) -> torch.Tensor:
    return batch.target_logp()


GRAD_ASCENT = register(FactObjective("grad_ascent", "forget", "true", grad_ascent_loss, c_forget=1.0,
                             summary="log p_true (minimised)"))
