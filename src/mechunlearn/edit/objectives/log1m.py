"""The paper's unlearning loss: -log(1 - p_true), zeroed once log p_true < cutoff (-5)."""

import torch

from mechunlearn.edit.objectives.base import FactLogits, FactObjective, register

_MAX_LOGP = -1e-6  # keeps -log(1 - p) finite when p rounds to 1


def log1m_loss(batch: FactLogits, config) -> torch.Tensor:
    logp = batch.target_logp()
    loss = -torch.log(-torch.expm1(logp.clamp(max=_MAX_LOGP)))
    return torch.where(logp < config.log1m_cutoff, torch.zeros_like(loss), loss)


LOG1M = register(FactObjective("log1m", "forget", "true", log1m_loss, c_forget=0.2,
                             summary="-log(1 - p_true), cut off below log p = -5"))
