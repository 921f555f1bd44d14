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
4. Rule, in two cuts:
   * Plateau: when the subject-alone probe curve's MONOTONE ENVELOPE rises at least
     ``min_probe_gain`` above chance, MLPs after the point where the attribute becomes decodable
     are dropped (later MLPs only carry it): the point where the envelope first reaches
     ``plateau`` (0.8) of its gain over chance. The envelope is the least-squares non-decreasing fit (isotonic
     regression): a cross-validated curve on ~100 facts is noisy, and a single early spike that
     falls back must not cut the lookup short (on the raw curve it did). A running maximum is
     no fix: its first crossing is the raw curve's.
   * Scores: of the MLPs l < L* that survive, keep those whose path-patching score is
     >= max(``threshold``, ``relative`` x the largest surviving score). The paper's absolute
     0.02 (signed: the MLP's clean output must carry the true answer) alone collects every
     marginal MLP on a small model (one seed: MLP 3 at 0.47 plus seven at 0.02-0.10), and which
     marginal ones pass changes from seed to seed; a cut relative to the dominant MLP keeps the
     MLPs of the same order as it and is scale-free. If nothing survives, the single
     highest-scoring MLP below L* is taken (and the evidence says so).

Scores: the FLU layers' MLP matrices (in, gate, out) carry their path-patching score; no other
component is scored, so a budget cut keeps the best FLU layers and never adds others.
"""

from __future__ import annotations

import numpy as np
import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.localize.catalog import FACT_LOOKUP_DEFAULTS
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
from mechunlearn.localize.probes import ProbeCurves, probe_curves
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.probes import residual_names

DEFAULTS = FACT_LOOKUP_DEFAULTS  # localize/catalog.py: readable without torch


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


def monotone_envelope(curve: list[float]) -> list[float]:
    """The least-squares non-decreasing fit of ``curve`` (isotonic regression)."""
    # imported here: scikit-learn costs 2 s of every command's start-up
    from sklearn.isotonic import IsotonicRegression

    points = np.arange(len(curve))
    return IsotonicRegression(increasing=True).fit_transform(points, np.asarray(curve, dtype=float)).tolist()


def plateau_point(envelope: list[float], chance: float, plateau: float) -> int:
    """The first point where a non-decreasing curve reaches ``plateau`` of its gain over chance."""
    target = chance + plateau * (max(envelope) - chance)
    return next(p for p, a in enumerate(envelope) if a >= target - 1e-12)


def choose_layers(mlp_scores: dict[int, float], probes: ProbeCurves | None, threshold: float, relative: float,
                  min_probe_gain: float, plateau: float, span: bool = False) -> tuple[list[int], str, dict]:
    """FLU's MLP layers (rule 4 of the module docstring), the rule in words, and its numbers.
    ``span``: the authors' sports rule, every MLP from the first that passes the cut up to the
    probe's plateau (or the receiver layer), whatever the scores in between."""
    candidates = sorted(mlp_scores)
    numbers, probe_words = {"threshold": threshold, "relative": relative}, ""
    if probes is not None:
        envelope = monotone_envelope(probes.subject)
        gain = max(envelope) - probes.chance
        if gain >= min_probe_gain:
            reached = plateau_point(envelope, probes.chance, plateau)  # point p = after block p-1
            last_layer = max(reached - 1, 0)
            candidates = [layer for layer in candidates if layer <= last_layer]
            numbers.update(envelope=envelope, plateau_point=reached, last_layer=last_layer)
            probe_words = (f", up to MLP {last_layer} (the monotone envelope of the subject-alone probe reaches "
                           f"{plateau:.0%} of its gain over chance at point {reached})")
        else:
            probe_words = f" (subject-alone probe gain {gain:.2f} < {min_probe_gain}: probes not used)"
    top = max(mlp_scores[layer] for layer in candidates)
    cut = max(threshold, relative * top)
    passing = [layer for layer in candidates if mlp_scores[layer] >= cut]
    numbers["cut"] = cut
    rule = (f"MLPs below the receiver layer with path-patching score >= max({threshold}, {relative} x the largest, "
            f"{top:.3f}) = {cut:.3f}{probe_words}")
    if span and passing:
        passing = [layer for layer in candidates if layer >= passing[0]]
        rule = (f"every MLP from the first below the receiver layer with path-patching score >= max({threshold}, "
                f"{relative} x the largest, {top:.3f}) = {cut:.3f}{probe_words or ', up to the receiver layer'}")
    if not passing:
        best = max(candidates, key=mlp_scores.__getitem__)
        return [best], rule + f"; nothing passed, so the best-scoring MLP ({best}) alone", numbers
    return passing, rule, numbers


def fact_lookup(lm: LoadedModel, facts: FactSet, seed: int, top_heads: int, threshold: float, relative: float,
                min_probe_gain: float, plateau: float, corrupt_pool: str, max_rows: int, probe_facts: FactSet | None,
                span: bool):
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
    layers, rule, rule_numbers = choose_layers(mlp_scores, probes, threshold, relative, min_probe_gain, plateau, span)
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
        "rule_numbers": rule_numbers,
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
