"""FLU, fact lookup localization, automatic for any model and relation.

1. Probes (``probes.py``): per-layer cross-validated accuracy of a linear probe for the true
   answer, on the subject alone and in the prompt, at the subject's last token; on the
   localization facts, or on ``probe_facts`` (more facts of the same relation: probes are data
   hungry, and ~30 facts give noisy curves).
2. Extraction heads: each head's output at the last token is path-patched from the corrupted
   run (subject tokens replaced by random tokens of the same length) into the FINAL residual
   only (direct path: final = clean final + f(z with that head corrupted) - f(z clean), f = the
   o projection and any post-attention norm). Score = normalised logit-difference effect
   ``sum(patched - clean) / sum(corrupt - clean)``. The receiver layer L* is the lowest layer
   among the ``top_heads`` heads by |score| (at least 1, so that an MLP precedes it).
3. MLP scores: for each MLP l < L*, (corrupt - clean) of its ``hook_mlp_out`` at the subject
   positions is added to the clean residual entering L* (``blocks.{L*}.hook_resid_pre``); the
   layers before L* stay clean (so only the direct path l -> L* is corrupted) and L* onwards
   runs normally. Same normalised logit-difference effect.
4. Rule: FLU layers = MLPs l < L* with path-patching score >= ``threshold`` (the paper's 0.02,
   signed: the MLP's clean output must carry the true answer) that are not after the subject
   probe's plateau: when the subject-alone probe rises at least ``min_probe_gain`` above chance,
   MLPs after the first point reaching ``plateau`` (0.8) of its maximum gain are dropped (the
   attribute is already decodable there; later MLPs only carry it). If nothing survives, the
   single highest-scoring MLP below L* is taken (and the evidence says so).

Scores: the FLU layers' MLP matrices (in, gate, out) carry their path-patching score; no other
component is scored, so a budget cut keeps the best FLU layers and never adds others.
"""

from __future__ import annotations

import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.localize.corruption import random_subject_tokens
from mechunlearn.localize.metrics import AnswerScorer, normalized_effect, require_effect
from mechunlearn.localize.patching import (
    Patch,
    PatchRunner,
    Variant,
    final_norm,
    head_output_fn,
    shared_prefix,
)
from mechunlearn.localize.probes import ProbeCurves, probe_curves, residual_names
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import encode

DEFAULTS = {"top_heads": 10, "threshold": 0.02, "min_probe_gain": 0.2, "plateau": 0.8, "corrupt_pool": "subjects",
            "max_rows": 128, "probe_facts": None}


def _readout(scorer: AnswerScorer, lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """[..., B, d] final hidden -> [..., B] logit differences."""
    *lead, B, d = hidden.shape
    index = torch.arange(B).repeat(int(torch.tensor(lead).prod()) if lead else 1)
    return scorer.read(lm.model, hidden.reshape(-1, d), index, need_p=False).logit_diff.view(*lead, B)


def extraction_head_scores(lm: LoadedModel, clean: dict, corrupt: dict, batch, scorer, ld_clean, ld_corrupt
                           ) -> dict[str, float]:
    arch = lm.arch
    rows = torch.arange(len(batch))
    last = batch.last_index
    final = clean[f"blocks.{arch.n_layers - 1}.hook_resid_post"][rows, last]  # [B, d]
    norm = final_norm(lm)
    scores = {}
    with torch.no_grad():
        for L in range(arch.n_layers):
            name = f"blocks.{L}.attn.hook_z"
            z_clean, z_corrupt = clean[name][rows, last], corrupt[name][rows, last]  # [B, F]
            point = arch.hook_point(name)
            f = head_output_fn(lm, L)
            base = f(z_clean)
            patched = z_clean.repeat(arch.n_heads, 1, 1)  # [H, B, F]
            for h in range(arch.n_heads):
                idx = point.units.feature_index([h]).to(z_clean.device)
                patched[h][:, idx] = z_corrupt[:, idx]
            resid = final + f(patched) - base
            ld = _readout(scorer, lm, norm(resid))
            for h in range(arch.n_heads):
                scores[f"blocks.{L}.attn.h{h}"] = normalized_effect(ld[h], ld_clean, ld_corrupt)
    return scores


def choose_layers(mlp_scores: dict[int, float], probes: ProbeCurves | None, threshold: float,
                  min_probe_gain: float, plateau: float) -> tuple[list[int], str]:
    passing = [layer for layer, s in sorted(mlp_scores.items()) if s >= threshold]
    rule = f"MLPs below the receiver layer with path-patching score >= {threshold}"
    if probes is not None:
        curve = probes.subject
        gain = max(curve) - probes.chance
        if gain >= min_probe_gain:
            target = probes.chance + plateau * gain
            reached = next(p for p, a in enumerate(curve) if a >= target)  # point p = after block p-1
            last_layer = max(reached - 1, 0)
            passing = [layer for layer in passing if layer <= last_layer]
            rule += (f", up to MLP {last_layer} (the subject-alone probe reaches {plateau:.0%} of its gain over "
                     f"chance at point {reached})")
        else:
            rule += f" (subject-alone probe gain {gain:.2f} < {min_probe_gain}: probes not used)"
    if not passing and mlp_scores:
        best = max(mlp_scores, key=mlp_scores.__getitem__)
        return [best], rule + f"; nothing passed, so the best-scoring MLP ({best}) alone"
    return passing, rule


def fact_lookup(lm: LoadedModel, facts: FactSet, seed: int, top_heads: int, threshold: float, min_probe_gain: float,
                plateau: float, corrupt_pool: str, max_rows: int, probe_facts: FactSet | None):
    arch = lm.arch
    if probe_facts is not None and not isinstance(probe_facts, FactSet):
        raise MechunlearnError(f"probe_facts must be a FactSet, got {type(probe_facts).__name__}")
    if arch.n_layers < 2:
        raise MechunlearnError("fact lookup needs a model with at least 2 layers (an MLP before the receiver layer)")
    scorer = AnswerScorer(lm.tokenizer, facts)
    batch = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts], device=lm.device)
    corrupted = random_subject_tokens(lm.tokenizer, batch.to("cpu"), seed, corrupt_pool).to(lm.device)
    names = [f"blocks.{L}.{n}" for L in range(arch.n_layers) for n in ("attn.hook_z", "hook_mlp_out")]
    corrupt_run = PatchRunner(lm, corrupted, max_rows=max_rows, cache_names=names)
    names += residual_names(arch.n_layers)
    clean_run = PatchRunner(lm, batch, max_rows=max_rows, cache_names=names, prefix=shared_prefix(batch))
    ld_clean = _readout(scorer, lm, clean_run.base_hidden)
    ld_corrupt = _readout(scorer, lm, corrupt_run.base_hidden)
    require_effect(ld_clean, ld_corrupt, "logit difference")

    heads = extraction_head_scores(lm, clean_run.cache, corrupt_run.cache, batch, scorer, ld_clean, ld_corrupt)
    top = sorted(heads, key=lambda k: -abs(heads[k]))[: min(top_heads, len(heads))]
    receiver = max(1, min(int(k.split(".")[1]) for k in top))

    resid = clean_run.resid_pre[receiver]
    variants = []
    for layer in range(receiver):
        m = f"blocks.{layer}.hook_mlp_out"
        delta = corrupt_run.cache[m] - clean_run.cache[m]
        variants.append(Variant(f"blocks.{layer}.mlp", (Patch(f"blocks.{receiver}.hook_resid_pre", resid + delta,
                                                          batch.subject_mask),)))
    ld_mlp = _readout(scorer, lm, clean_run.run(variants))
    mlp_scores = {layer: normalized_effect(ld_mlp[layer], ld_clean, ld_corrupt) for layer in range(receiver)}

    if probe_facts is None:
        probes = probe_curves(lm, facts, batch.to("cpu"), seed=seed, prompt_cache=clean_run.cache)
    else:
        probes = probe_curves(lm, probe_facts, seed=seed)
    layers, rule = choose_layers(mlp_scores, probes, threshold, min_probe_gain, plateau)
    scores = {f"blocks.{layer}.mlp.{m}": mlp_scores[layer] for layer in layers for m in arch.matrix_types
              if m in ("in", "gate", "out")}
    evidence = {
        "probes": probes.to_json() if probes else None,
        "probe_note": None if probes else "fewer than 2 answer classes with enough facts to probe",
        "probe_facts": "the localization facts" if probe_facts is None else f"{len(probe_facts)} separate facts "
                       f"({probe_facts.name})",
        "extraction_heads": dict(sorted(heads.items(), key=lambda kv: -abs(kv[1]))),
        "top_heads": top,
        "receiver_layer": receiver,
        "mlp_path_patching": {str(layer): s for layer, s in mlp_scores.items()},
        "flu_layers": layers,
        "rule": rule,
        "logit_diff": {"clean": float(ld_clean.mean()), "corrupt": float(ld_corrupt.mean())},
        "metric": "normalised logit difference: sum(patched - clean) / sum(corrupt - clean); "
                  + ("closed set: logit(true) - mean logit(other answers)" if facts.closed
                     else "open: logit(true) - logit(edit target)"),
        "corruption": f"subject tokens replaced by random tokens of the same length (pool {corrupt_pool!r}, seed {seed})",
        "aggregation": "FLU scores only its chosen MLP layers' in/gate/out matrices, each with the MLP's "
                       "path-patching score",
    }
    chosen = list(scores)
    return scores, evidence, chosen
