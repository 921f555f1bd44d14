"""General language modelling: next-token cross-entropy on windows of general text, the one
loss shared by the training term, the relearning attack and the LM-loss side effect
(``evaluate/lm_loss.py``). It needs logits at every position of a window (a 262k vocabulary is
large): keep training windows short, this term dominates a step's cost."""

import torch
import torch.nn.functional as F

from mechunlearn.models.scoring import unembed


def lm_hidden(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The final hidden state at every position that predicts a next token (``[B, T-1, d]``) and
    that next token (``[B, T-1]``) of full (unpadded) windows ``[B, T]``."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    return hidden, input_ids[:, 1:].to(hidden.device)


def window_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each window, ``[B]`` in float32, from the logits of every
    position (``[B * (T-1), V]``, window by window) and the next tokens ``[B, T-1]``."""
    per_token = F.cross_entropy(logits.float(), labels.flatten(), reduction="none")
    return per_token.view(labels.shape).mean(-1)


def general_lm_loss(model: torch.nn.Module, input_ids: torch.Tensor, position_chunk: int = 64) -> torch.Tensor:
    """Mean next-token cross-entropy of each full (unpadded) window ``[B, T]``: ``[B]``, in
    float32. Differentiable. Projects to the vocabulary ``position_chunk`` positions at a time."""
    if position_chunk < 1:
        raise ValueError(f"position_chunk must be >= 1, got {position_chunk}")
    hidden, labels = lm_hidden(model, input_ids)
    total = hidden.new_zeros(labels.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[1], position_chunk):
        h = hidden[:, start:start + position_chunk]
        # one 2-D matmul per chunk: each chunk re-reads the whole vocabulary matrix, and a 3-D
        # slice goes through a batched matmul that is ~2x slower on CPU
        logits = unembed(model, h.reshape(-1, h.shape[-1]))
        target = labels[:, start:start + position_chunk]
        total = total + window_losses(logits, target) * target.shape[1]
    return total / labels.shape[1]
