"""Exact activation patching, the reference that attribution patching approximates: each
head's ``hook_z`` slice and each MLP's ``hook_mlp_out`` from the corrupted run (subject tokens
replaced by random tokens) is written into the clean run, at every position. Score = normalised
logit-difference effect ``sum(patched - clean) / sum(corrupt - clean)``. Batched through
``PatchRunner`` (``batched=False``: one forward pass per patch)."""

from __future__ import annotations

import torch

from mechunlearn.facts import FactSet
from mechunlearn.localize.corruption import random_subject_tokens
from mechunlearn.localize.metrics import AnswerScorer, normalized_effect, require_effect
from mechunlearn.localize.patching import (
    PatchRunner,
    component_hook_names,
    component_variants,
    shared_prefix,
)
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import encode, final_hidden


def activation_patching(lm: LoadedModel, facts: FactSet, seed: int = 0, corrupt_pool: str = "subjects",
                        heads: bool = True, batched: bool = True, max_rows: int = 128) -> dict[str, float]:
    """Labels ``blocks.L.attn.hH`` / ``blocks.L.mlp`` -> normalised effect."""
    arch = lm.arch
    scorer = AnswerScorer(lm.tokenizer, facts)
    batch = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts], device=lm.device)
    corrupted = random_subject_tokens(lm.tokenizer, batch.to("cpu"), seed, corrupt_pool).to(lm.device)
    layers = range(arch.n_layers)
    index = torch.arange(len(facts))
    with torch.no_grad(), cache_activations(lm.model, component_hook_names(layers, heads=heads)) as corrupt:
        ld_corrupt = scorer.read(lm.model, final_hidden(lm.model, corrupted), index, need_p=False).logit_diff
    runner = PatchRunner(lm, batch, max_rows=max_rows, prefix=shared_prefix(batch))
    ld_clean = scorer.read(lm.model, runner.base_hidden, index, need_p=False).logit_diff
    require_effect(ld_clean, ld_corrupt, "logit difference")
    variants = component_variants(arch, corrupt, layers, heads=heads)
    hidden = runner.run(variants) if batched else runner.run_loop(variants)
    out = {}
    for v, h in zip(variants, hidden, strict=True):
        ld = scorer.read(lm.model, h, index, need_p=False).logit_diff
        out[v.label] = normalized_effect(ld, ld_clean, ld_corrupt)
    return out
