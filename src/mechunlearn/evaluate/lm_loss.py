"""Language-modelling loss on general English text (a side effect of editing)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mechunlearn.facts.general_text import general_windows
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import batched, unembed


def next_token_loss(model, input_ids: torch.Tensor, position_chunk: int = 16) -> torch.Tensor:
    """Mean next-token cross-entropy of full (unpadded) windows ``[B, T]``, projecting to the
    vocabulary a few positions at a time (a 262k vocabulary is large). Differentiable."""
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    targets = input_ids[:, 1:]
    total = hidden.new_zeros(())
    for start in range(0, hidden.shape[1], position_chunk):
        h = hidden[:, start:start + position_chunk]
        logits = unembed(model, h)
        total = total + F.cross_entropy(logits.flatten(0, 1).float(), targets[:, start:start + position_chunk].flatten(),
                                        reduction="sum")
    return total / targets.numel()


def lm_loss(lm: LoadedModel, path: str | Path | None = None, n_windows: int = 16, length: int = 64, seed: int = 0,
            batch_size: int = 4, progress: bool = False) -> dict:
    """Mean next-token cross-entropy (nats/token) and perplexity on seeded windows of general text."""
    windows = general_windows(lm.tokenizer, path, length, n_windows, seed)
    losses = []
    with torch.no_grad():
        for rows in tqdm(list(batched(len(windows), batch_size)), desc="LM loss", disable=not progress, leave=False):
            ids = windows[rows].to(lm.device)
            losses.append(float(next_token_loss(lm.model, ids)) * len(ids))
    loss = sum(losses) / len(windows)
    return {"loss": loss, "perplexity": math.exp(loss), "n_windows": len(windows), "window_length": length,
            "source": str(path) if path else "built-in general text"}
