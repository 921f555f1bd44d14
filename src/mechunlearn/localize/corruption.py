"""Corrupted inputs, all seeded.

* ``random_subject_tokens``: every subject token is replaced by a random token, keeping the
  subject's length and every other token. ``pool="subjects"`` (default) draws the tokens from
  the subject tokens of all the localization prompts (a "made-up name" that stays in the
  distribution of names); ``pool="vocab"`` draws uniformly from the vocabulary minus special
  tokens. A replacement never equals the token it replaces (when the pool allows).
* ``embedding_noise``: ROME's corruption. Gaussian noise of ``scale * sigma`` is added to the
  embedding output (``hook_embed``) at the subject tokens, where sigma is the standard deviation
  of the embedding outputs over the subject tokens of the localization prompts (ROME: over a
  sample of subject embeddings). The authors' code used sqrt(3 sigma); this is 3 sigma.
"""

from __future__ import annotations

import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.encoding import Encoded

POOLS = ("subjects", "vocab")


def random_subject_tokens(tokenizer, batch: Encoded, seed: int, pool: str = "subjects") -> Encoded:
    if batch.subject_mask is None:
        raise MechunlearnError("corrupting subjects needs an encoded batch with a subject mask")
    if pool == "subjects":
        candidates = torch.unique(batch.input_ids[batch.subject_mask])
    elif pool == "vocab":
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        everything = torch.arange(len(tokenizer))
        candidates = everything[~torch.isin(everything, special)]
    else:
        raise MechunlearnError(f"unknown corruption pool {pool!r}: {POOLS}")
    gen = torch.Generator().manual_seed(seed)
    ids = batch.input_ids.clone()
    where = batch.subject_mask.nonzero().tolist()
    draws = torch.randint(len(candidates), (len(where), 2), generator=gen)
    for (b, t), (i, j) in zip(where, draws.tolist(), strict=True):
        token = candidates[i]
        if token == ids[b, t] and len(candidates) > 1:
            token = candidates[(i + 1 + j % (len(candidates) - 1)) % len(candidates)]
        ids[b, t] = token
    return Encoded(ids, batch.attention_mask.clone(), batch.last_index.clone(), batch.subject_mask.clone())


def subject_embedding_std(embeddings: torch.Tensor, subject_mask: torch.Tensor) -> float:
    """Std of the embedding outputs ([B, T, d]) over every subject token and feature."""
    return float(embeddings[subject_mask.to(embeddings.device)].float().std())


def embedding_noise(shape: tuple[int, ...], subject_mask: torch.Tensor, sigma: float, scale: float, seed: int,
                    n_samples: int = 1) -> torch.Tensor:
    """``[n_samples, B, T, d]`` noise, zero outside the subject tokens."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_samples, *shape), generator=gen) * (scale * sigma)
    return noise * subject_mask[None, :, :, None].float()
