"""Tokenize prompts and read logits only where a metric or loss needs them.

Batches are right-padded, so every real token keeps its unpadded position and the subject's
positions are the same with or without batching. The vocabulary projection is applied only to
each prompt's last real token, and only to the answer tokens when a closed answer set is given
(Gemma 3 has 262k tokens).
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


def answer_token_id(tokenizer, answer: str, what: str = "answer") -> int:
    """First token of ``answer`` as it follows the prompt (answers carry their leading space)."""
    ids = tokenizer.encode(answer, add_special_tokens=False)
    if not ids:
        raise FactDataError(f"{what} {answer!r} tokenizes to nothing")
    return ids[0]


def _softcap(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def final_hidden(model: nn.Module, batch: Encoded) -> torch.Tensor:
    """Final (normed) hidden state at each prompt's last real token: [B, d_model]."""
    out = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    h = out.last_hidden_state
    return h[torch.arange(h.shape[0], device=h.device), batch.last_index.to(h.device)]


def unembed(model: nn.Module, hidden: torch.Tensor, token_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    head = model.get_output_embeddings()
    if token_ids is None:
        return _softcap(model, head(hidden))
    idx = torch.as_tensor(token_ids, device=hidden.device)
    logits = hidden @ head.weight[idx].T.to(hidden.dtype)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[idx]
    return _softcap(model, logits)


def last_token_logits(model: nn.Module, batch: Encoded, token_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the last real token: [B, vocab], or [B, len(token_ids)] for a closed set."""
    return unembed(model, final_hidden(model, batch), token_ids).float()


def batched(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
