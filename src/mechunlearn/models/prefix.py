"""Run a prompt prefix once and each prompt's suffix on top of its keys and values.

Fact prompts of one relation usually start alike (the sports prompt's one-shot "Fact: Tiger
Woods plays the sport of golf\\nFact:" is about half of its tokens), and patched variants of one
base run share the positions before the subject. ``PrefixKV.run`` runs the prefix and keeps
every layer's keys and values at full length (sliding-window layers record their past, so a
cache rebuilt from them knows how long the prefix was). ``PrefixKV.cache(rows)`` builds a fresh
``DynamicCache`` holding the chosen rows of the prefix (a row may repeat) for one forward pass;
that pass appends to the new cache and never to the stored keys, so a prefix can be reused.
Gradients flow through the keys and values into the prefix's own computation, so values and
gradients equal a full forward pass up to float rounding.

Written against the cache API of transformers 5.x (``cache=`` argument, ``DynamicCache``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.encoding import Encoded, final_hidden

MIN_PREFIX = 4  # shorter shared prefixes cost more in the extra call than they save


@dataclass(frozen=True)
class PrefixKV:
    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: [rows, kv_heads, P, d_head] each
    length: int  # P
    config: object  # the model config the cache layers are built from

    @classmethod
    def run(cls, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> PrefixKV:
        """Keys and values of ``input_ids`` ([rows, P], the prefix of each prompt)."""
        cache = DynamicCache(config=model.config)
        cache.activate_past_recording()  # sliding-window layers keep the whole prefix
        model.base_model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
        return cls(tuple((k, v) for k, v, _ in cache), input_ids.shape[1], model.config)

    @property
    def rows(self) -> int:
        return self.keys_values[0][0].shape[0]

    def cache(self, rows: torch.Tensor, record_past: bool = False) -> DynamicCache:
        """A new cache holding prefix rows ``rows`` (e.g. ``zeros(n)``: the first row n times)."""
        cache = DynamicCache(config=self.config)
        if record_past:
            cache.activate_past_recording()
        for layer, (keys, values) in enumerate(self.keys_values):
            index = rows.to(keys.device)
            cache.update(keys.index_select(0, index), values.index_select(0, index), layer)
        return cache


def forward_suffix(model: nn.Module, prefix: PrefixKV, rows: torch.Tensor, suffix_ids: torch.Tensor,
                   attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states ``[n, T - P, d]`` of prompts whose first P tokens are prefix rows
    ``rows``: ``suffix_ids`` holds positions P.. ([n, T - P]), ``attention_mask`` all T ([n, T])."""
    if suffix_ids.shape[1] + prefix.length != attention_mask.shape[1]:
        raise MechunlearnError(f"prefix ({prefix.length}) + suffix ({suffix_ids.shape[1]}) tokens do not match the "
                               f"attention mask ({attention_mask.shape[1]})")
    out = model.base_model(input_ids=suffix_ids, attention_mask=attention_mask, position_ids=position_ids,
                           cache=prefix.cache(rows), use_cache=True)
    return out.last_hidden_state


def run_recorded(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prefix: PrefixKV | None = None, rows: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, PrefixKV]:
    """Last hidden states of ``input_ids`` (after prefix rows ``rows`` when a prefix is given; the
    attention mask covers every position) and a prefix holding all of their keys and values."""
    cache = prefix.cache(rows, record_past=True) if prefix is not None else DynamicCache(config=model.config)
    cache.activate_past_recording()
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                           use_cache=True)
    return out.last_hidden_state, PrefixKV(tuple((k, v) for k, v, _ in cache), attention_mask.shape[1], model.config)


def shared_prefix_length(batch: Encoded) -> int:
    """Leading positions that hold the same real token in every prompt, leaving each prompt at
    least its last token."""
    ids, mask = batch.input_ids, batch.attention_mask.bool()
    same = (ids == ids[:1]).all(0) & mask.all(0)
    length = int(same.long().cumprod(0).sum())
    return min(length, int(batch.last_index.min()))


def final_hidden_shared(model: nn.Module, batch: Encoded, min_prefix: int = MIN_PREFIX) -> torch.Tensor:
    """Like :func:`final_hidden` ([B, d_model] at each prompt's last real token), running the
    prompts' common prefix once; a plain forward pass when they share fewer than ``min_prefix``."""
    P = shared_prefix_length(batch)
    if len(batch) < 2 or P < min_prefix:
        return final_hidden(model, batch)
    prefix = PrefixKV.run(model, batch.input_ids[:1, :P], batch.attention_mask[:1, :P])
    rows = torch.zeros(len(batch), dtype=torch.long)
    h = forward_suffix(model, prefix, rows, batch.input_ids[:, P:], batch.attention_mask)
    return h[torch.arange(h.shape[0], device=h.device), (batch.last_index - P).to(h.device)]
