"""Prompts as right-padded token batches, and the forward pass to each prompt's last hidden state.

Batches are right-padded, so every real token keeps its unpadded position and the subject's
positions are the same with or without batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.errors import FactDataError


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    last_index: torch.Tensor  # [B] position of each prompt's last real token
    subject_mask: torch.Tensor | None = None  # [B, T] bool, tokens overlapping the subject

    def to(self, device) -> Encoded:
        sm = None if self.subject_mask is None else self.subject_mask.to(device)
        return Encoded(self.input_ids.to(device), self.attention_mask.to(device), self.last_index.to(device), sm)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: slice | torch.Tensor) -> Encoded:
        sm = None if self.subject_mask is None else self.subject_mask[index]
        return Encoded(self.input_ids[index], self.attention_mask[index], self.last_index[index], sm)

    @property
    def last_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        mask[torch.arange(len(self)), self.last_index] = True
        return mask


def encode(tokenizer, prompts: Sequence[str], subjects: Sequence[str] | None = None, device=None) -> Encoded:
    """Right-padded batch; with ``subjects`` also a mask of the tokens of each prompt's last
    occurrence of its subject."""
    if not prompts:
        raise FactDataError("no prompts to encode")
    want_offsets = subjects is not None
    enc = tokenizer(
        list(prompts), return_tensors="pt", padding=True, padding_side="right", return_offsets_mapping=want_offsets
    )
    mask = enc["attention_mask"]
    last = mask.sum(1) - 1
    subject_mask = None
    if want_offsets:
        offsets = enc["offset_mapping"]
        subject_mask = torch.zeros_like(mask, dtype=torch.bool)
        for i, (prompt, subject) in enumerate(zip(prompts, subjects, strict=True)):
            start = prompt.rfind(subject)
            if start < 0:
                raise FactDataError(f"subject {subject!r} does not occur in prompt {prompt!r}")
            end = start + len(subject)
            a, b = offsets[i, :, 0], offsets[i, :, 1]
            subject_mask[i] = (a < end) & (b > start) & (b > a) & mask[i].bool()
            if not subject_mask[i].any():
                raise FactDataError(f"no token of subject {subject!r} found in {prompt!r}")
    out = Encoded(enc["input_ids"], mask, last, subject_mask)
    return out.to(device) if device is not None else out


def final_hidden(model: nn.Module, batch: Encoded) -> torch.Tensor:
    """Final (normed) hidden state at each prompt's last real token: [B, d_model]."""
    out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    h = out.last_hidden_state
    return h[torch.arange(h.shape[0], device=h.device), batch.last_index.to(h.device)]
