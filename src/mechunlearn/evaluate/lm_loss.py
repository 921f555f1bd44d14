"""Language-modelling loss on the EVALUATION part of general English text (a side effect of
editing, measured on text the general-LM training term never saw)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechunlearn.edit.objectives.lm import general_lm_loss
from mechunlearn.facts.general_text import SPLIT_RULE, general_windows, source_name
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import batched


def next_token_loss(model, input_ids: torch.Tensor, position_chunk: int = 16) -> torch.Tensor:
    """Mean next-token cross-entropy over all tokens of full windows ``[B, T]`` (a scalar; the
    training term's loss averaged over the windows). Differentiable."""
    return general_lm_loss(model, input_ids, position_chunk).mean()


def lm_loss(lm: LoadedModel, path: str | Path | None = None, n_windows: int | None = 16, length: int = 64,
            seed: int = 0, batch_size: int = 4, progress: bool = False, part: str = "eval") -> dict:
    """Mean next-token cross-entropy (nats/token) and perplexity on seeded windows of one part
    of general text (default: the held-out evaluation part; all its windows when ``n_windows``
    is None)."""
    windows = general_windows(lm.tokenizer, path, length, n_windows, seed, part=part)
    total = 0.0
    with torch.no_grad():
        for rows in tqdm(list(batched(len(windows), batch_size)), desc="LM loss", disable=not progress, leave=False):
            total += float(general_lm_loss(lm.model, windows[rows].to(lm.device)).sum())
    loss = total / len(windows)
    return {"loss": loss, "perplexity": math.exp(loss), "part": part, "n_windows": len(windows),
            "window_length": length, "source": source_name(path), "split_rule": SPLIT_RULE}
