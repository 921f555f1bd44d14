"""General language modelling: next-token cross-entropy on windows of general text. It needs
logits at every position, so keep its windows short (it dominates the cost of a step on a
262k-token vocabulary)."""

import torch
import torch.nn.functional as F

from mechunlearn.models.scoring import unembed


def general_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each window: [B]."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
    logits = unembed(model, hidden[:, :-1]).float()
    labels = input_ids[:, 1:].to(logits.device)
    per_token = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return per_token.view(labels.shape).mean(-1)
