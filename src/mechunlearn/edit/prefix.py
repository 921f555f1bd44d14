"""Final hidden states of prompts that share a prefix, computing the prefix once.

Fact prompts of one relation usually start alike (the sports prompt's one-shot
"Fact: Tiger Woods plays the sport of golf\\nFact:" is about half of its tokens). The shared
prefix runs once, its key/value cache is repeated over the batch, and only each prompt's own
suffix runs per prompt. Gradients flow through the cache, so the losses and gradients equal a
full forward pass up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from mechunlearn.models.scoring import Encoded, final_hidden

MIN_PREFIX = 4  # below this the extra call costs more than it saves


def shared_prefix_length(batch: Encoded) -> int:
    """Leading positions that hold the same real token in every prompt, leaving each prompt at
    least its last token."""
    ids, mask = batch.input_ids, batch.attention_mask.bool()
    same = (ids == ids[:1]).all(0) & mask.all(0)
    length = int(same.long().cumprod(0).sum())
    return min(length, int(batch.last_index.min()))


def final_hidden_shared(model: nn.Module, batch: Encoded, min_prefix: int = MIN_PREFIX) -> torch.Tensor:
    """Like :func:`final_hidden` ([B, d_model] at each prompt's last real token)."""
    P = shared_prefix_length(batch)
    if len(batch) < 2 or P < min_prefix:
        return final_hidden(model, batch)
    base = model.base_model
    prefix = base(input_ids=batch.input_ids[:1, :P], attention_mask=batch.attention_mask[:1, :P], use_cache=True)
    cache = prefix.cache
    cache.batch_repeat_interleave(len(batch))
    out = base(input_ids=batch.input_ids[:, P:], attention_mask=batch.attention_mask, cache=cache, use_cache=True)
    h = out.last_hidden_state
    return h[torch.arange(h.shape[0], device=h.device), (batch.last_index - P).to(h.device)]
