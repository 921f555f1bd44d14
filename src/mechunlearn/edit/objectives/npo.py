"""Negative preference optimisation (Zhang et al. 2024):
(2 / beta) * log(1 + (p / p_ref)^beta), p_ref the probability before training."""

import torch
import torch.nn.functional as F

from mechunlearn.edit.objectives.base import FactLogits, FactObjective, register


def npo_loss(batch: FactLogits, config) -> torch.Tensor:
    if batch.reference is None:
        raise ValueError("npo needs the reference log-probabilities of the model before training")
    beta = config.npo_beta
    return -(2.0 / beta) * F.logsigmoid(-beta * (batch.target_logp() - batch.reference))


NPO = register(FactObjective("npo", "forget", "true", npo_loss, needs_reference=True, c_forget=1.0,
                             summary="(2/beta) log(1 + (p/p_ref)^beta)"))
