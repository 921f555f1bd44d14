"""General language modelling: next-token cross-entropy on windows of general text, the one
loss shared by the training term and the LM-loss side effect (``evaluate/lm_loss.py``). It
needs logits at every position, so it projects to the vocabulary a few positions at a time (a
262k vocabulary is large); keep training windows short, this term dominates a step's cost."""

import torch
import torch.nn.functional as F

from mechunlearn.models.scoring import unembed


def general_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, position_chunk: int = 64) -> torch.Tensor:
    """Mean next-token cross-entropy of each full (unpadded) window ``[B, T]``: ``[B]``, in
    float32. Differentiable."""
    if position_chunk < 1:
        raise ValueError(f"position_chunk must be >= 1, got {position_chunk}")
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    labels = input_ids[:, 1:].to(hidden.device)
    total = hidden.new_zeros(labels.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[1], position_chunk):
        h = hidden[:, start:start + position_chunk]
        # one 2-D matmul per chunk: each chunk re-reads the whole vocabulary matrix, and a 3-D
        # slice goes through a batched matmul that is ~2x slower on CPU
        logits = unembed(model, h.reshape(-1, h.shape[-1])).float()
        target = labels[:, start:start + position_chunk]
        per_token = F.cross_entropy(logits, target.flatten(), reduction="none")
        total = total + per_token.view(target.shape).sum(-1)
    return total / labels.shape[1]
