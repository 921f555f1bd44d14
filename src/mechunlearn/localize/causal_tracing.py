"""Causal tracing (ROME, Meng et al. 2022) per attention head and per MLP.

Corruption: Gaussian noise of ``noise_scale`` (3) x sigma added to the embedding output
(``hook_embed``) at the subject tokens; sigma is the standard deviation of the clean embedding
outputs over the subject tokens of the localization prompts (ROME's definition: over subject
embeddings). Seeded; ``n_noise`` independent noise samples are averaged.

Restoration: one component's clean output is written back into the noised run: a head's slice
of ``blocks.L.attn.hook_z`` (the o projection's input), the whole ``hook_z`` (every head at once:
the whole attention output), or the MLP's ``blocks.L.hook_mlp_out``, at every position.
Positions before the first subject token are identical in the clean and the noised run (causal
attention), so "every position" and "the subject and later positions" are the same intervention.

Metric: each prompt's OWN P(true answer) (closed answer sets: softmax over the set; open:
full vocabulary). Score = recovery ``sum(p_restored - p_noised) / sum(p_clean - p_noised)`` over
prompts and noise samples. Restorations run batched, from the cached noised residual at the
restored layer (``patching.PatchRunner``).

Scale (``scores``): an attention layer scores the restoration of its whole output, an MLP layer
the restoration of the MLP output: both are the net effect of one block. Per-head restorations
are kept for head-granularity selections.
"""

from __future__ import annotations

import torch

from mechunlearn.facts import FactSet
from mechunlearn.localize.catalog import CAUSAL_TRACING_DEFAULTS
from mechunlearn.localize.corruption import embedding_noise, subject_embedding_std
from mechunlearn.localize.metrics import AnswerScorer, recovery, require_effect
from mechunlearn.localize.patching import (
    Patch,
    PatchRunner,
    Variant,
    component_hook_names,
    component_variants,
    shared_prefix,
)
from mechunlearn.localize.scores import AGGREGATION, head_and_mlp_scores
from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import LoadedModel

DEFAULTS = CAUSAL_TRACING_DEFAULTS  # localize/catalog.py: readable without torch


def p_true(scorer: AnswerScorer, lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """[..., B, d] -> [..., B] each prompt's own P(true)."""
    *lead, B, d = hidden.shape
    n = 1
    for x in lead:
        n *= x
    return scorer.read(lm.model, hidden.reshape(-1, d), torch.arange(B).repeat(n)).p_true.view(*lead, B)


def causal_tracing(lm: LoadedModel, facts: FactSet, seed: int, noise_scale: float, n_noise: int, heads: bool,
                   max_rows: int, progress: bool):
    arch = lm.arch
    scorer = AnswerScorer(lm.tokenizer, facts)
    batch = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts], device=lm.device)
    layers = range(arch.n_layers)
    names = ["hook_embed", *component_hook_names(layers, heads=heads)]
    with torch.no_grad(), cache_activations(lm.model, names) as clean:
        p_clean = p_true(scorer, lm, final_hidden(lm.model, batch))
    sigma = subject_embedding_std(clean["hook_embed"], batch.subject_mask)
    embed_shape = tuple(clean["hook_embed"].shape)
    noise = embedding_noise(embed_shape, batch.subject_mask.cpu(), sigma, noise_scale, seed, n_noise).to(lm.device)
    variants = component_variants(arch, clean, layers, heads=heads)
    if heads:
        variants += [Variant(f"blocks.{L}.attn", (Patch(f"blocks.{L}.attn.hook_z", clean[f"blocks.{L}.attn.hook_z"]),))
                     for L in layers]
    p_noised, p_restored = [], []
    prefix, prefix_cache = shared_prefix(batch), None
    for s in range(n_noise):
        add = noise[s]
        runner = PatchRunner(lm, batch, [("hook_embed", lambda act, _p, add=add: act + add.to(act.dtype))], max_rows,
                             prefix=prefix, prefix_cache=prefix_cache)
        prefix_cache = runner.prefix_cache
        p_noised.append(p_true(scorer, lm, runner.base_hidden))
        p_restored.append(p_true(scorer, lm, runner.run(variants, progress=progress)))
    p_noised, p_restored = torch.stack(p_noised), torch.stack(p_restored, 1)  # [S, B], [V, S, B]
    require_effect(p_clean.expand_as(p_noised), p_noised, "probability of the true answer")
    table = {v.label: recovery(p_restored[i], p_clean, p_noised) for i, v in enumerate(variants)}
    head_scores = {(L, h): table[f"blocks.{L}.attn.h{h}"] for L in layers for h in range(arch.n_heads) if heads}
    attn_scores = {L: table[f"blocks.{L}.attn"] for L in layers if heads}
    mlp_scores = {L: table[f"blocks.{L}.mlp"] for L in layers}
    evidence = {
        "recovery": table,
        "p_clean": float(p_clean.mean()),
        "p_noised": float(p_noised.mean()),
        "sigma": sigma,
        "noise": f"N(0, ({noise_scale} x sigma)^2) on the subject tokens' embeddings, sigma = std of the clean "
                 f"embedding outputs over the subject tokens; {n_noise} sample(s), seed {seed}",
        "metric": "recovery of each prompt's own P(true): sum(p_restored - p_noised) / sum(p_clean - p_noised)",
        "restored": "a head's slice of hook_z / the whole hook_z (the attention block) / the MLP's hook_mlp_out, "
                    "clean, at every position",
        "aggregation": AGGREGATION + "; causal tracing: attention matrices carry the whole attention block's "
                                     "restoration, MLP matrices the MLP's; one score per head is written to its q "
                                     "and o slices, KV heads get the sum of |score| of the query heads they serve",
    }
    return head_and_mlp_scores(arch, head_scores, mlp_scores, attn_scores), evidence, []


def causal_tracing_mlps(lm: LoadedModel, facts: FactSet, seed: int, **params):
    """Causal tracing restricted to the MLP layers."""
    scores, evidence, chosen = causal_tracing(lm, facts, seed, heads=False, **params)
    return scores, {**evidence, "restricted_to": "MLP layers"}, chosen
