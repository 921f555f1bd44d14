"""Attribution patching (Nanda 2023; Syed et al. 2023): the linear approximation of activation
patching, ``(a_corrupt - a_clean) . d metric / d a`` at the clean run, for every head slice of
q, k, v, o and every MLP matrix (in, gate, out) at once: per batch, one clean forward + backward
and one corrupted forward.

Activations are each matrix's features on its unit side (``models.components``): the outputs
of q, k, v, in, gate and the inputs of o (= per-head z) and out (= MLP neurons). Corruption:
subject tokens replaced by random tokens of the same length (seeded, as FLU). Metric: logit
difference (closed sets: true minus the mean of the other answers; open: true minus edit
target), summed over prompts; scores are normalised by sum(corrupt - clean), so a score is the
estimated fraction of the corruption's effect that patching that component alone would cause.

Scores: every matrix ``blocks.L.{attn,mlp}.M``, the signed sum over its heads or neurons (the
estimate is linear, so this is the estimate of patching the whole matrix; for o and out, of the
whole block's output: attention and MLP layers are on one scale, see ``scores``); every head
slice ``blocks.L.attn.M.hH``; ``neurons=True`` adds ``blocks.L.mlp.M.nN``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from mechunlearn.facts import FactSet
from mechunlearn.localize.catalog import ATTRIBUTION_DEFAULTS
from mechunlearn.localize.corruption import random_subject_tokens
from mechunlearn.localize.metrics import AnswerScorer, require_effect
from mechunlearn.localize.scores import AGGREGATION
from mechunlearn.models.components import ATTN_MATRICES
from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.hooks import cache_activations, record_gradients
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import batched

DEFAULTS = ATTRIBUTION_DEFAULTS  # localize/catalog.py: readable without torch


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients inside (activations can still get them)."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


def unit_attributions(lm: LoadedModel, facts: FactSet, seed: int, batch_size: int, corrupt_pool: str,
                      blocks: tuple[str, ...], progress: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Per matrix name, the summed attribution of each unit ([n_units]) before normalisation,
    and the clean / corrupted logit differences."""
    arch = lm.arch
    scorer = AnswerScorer(lm.tokenizer, facts)
    names = [c.name for c in arch.matrices(blocks=tuple(blocks))]
    points = {n: arch.hook_point(n) for n in names}
    full = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts])
    corrupted_full = random_subject_tokens(lm.tokenizer, full, seed, corrupt_pool)
    totals = {n: torch.zeros(points[n].units.n_units, dtype=torch.float64) for n in names}
    features = {n: points[n].units.feature_index() for n in names}  # [n_units * unit_size], unit-major
    ld_clean, ld_corrupt = [], []
    for rows in tqdm(list(batched(len(facts), batch_size)), desc="attribution patching", disable=not progress):
        clean, corrupt = full.rows(rows).to(lm.device), corrupted_full.rows(rows).to(lm.device)
        index = torch.arange(rows.start, rows.stop)
        with torch.no_grad(), cache_activations(lm.model, names) as corrupt_acts:
            ld_corrupt.append(scorer.read(lm.model, final_hidden(lm.model, corrupt), index, need_p=False).logit_diff)
        with frozen(lm.model), record_gradients(lm.model, names) as acts:
            ld = scorer.logit_diff(lm.model, final_hidden(lm.model, clean), index)
            ld.sum().backward()
        ld_clean.append(ld.detach().cpu())
        for n in names:
            a = acts[n]
            per_feature = ((corrupt_acts[n] - a.detach()) * a.grad).sum(dim=(0, 1)).double().cpu()  # [F]
            totals[n] += per_feature[features[n]].view(points[n].units.n_units, -1).sum(-1)
    return totals, {"clean": torch.cat(ld_clean), "corrupt": torch.cat(ld_corrupt)}


def attribution_patching(lm: LoadedModel, facts: FactSet, seed: int, batch_size: int, corrupt_pool: str,
                         neurons: bool, blocks: tuple[str, ...], progress: bool):
    totals, ld = unit_attributions(lm, facts, seed, batch_size, corrupt_pool, tuple(blocks), progress)
    require_effect(ld["clean"], ld["corrupt"], "logit difference")
    norm = float((ld["corrupt"] - ld["clean"]).sum())
    scores: dict[str, float] = {}
    for name, units in totals.items():
        units = units / norm
        scores[name] = float(units.sum())
        if name.split(".")[-1] in ATTN_MATRICES:
            scores.update({f"{name}.h{u}": float(v) for u, v in enumerate(units)})
        elif neurons:
            scores.update({f"{name}.n{u}": float(v) for u, v in enumerate(units)})
    evidence = {
        "logit_diff": {"clean": float(ld["clean"].mean()), "corrupt": float(ld["corrupt"].mean())},
        "metric": "logit difference "
                  + ("(true - mean of the other answers)" if facts.closed else "(true - edit target)")
                  + "; score = sum over prompts of (a_corrupt - a_clean) . grad / sum(corrupt - clean)",
        "corruption": f"subject tokens replaced by random tokens of the same length (pool {corrupt_pool!r}, seed {seed})",
        "aggregation": AGGREGATION,
    }
    return scores, evidence, []


def attribution_patching_mlps(lm: LoadedModel, facts: FactSet, seed: int, **params):
    """Attribution patching restricted to the MLP matrices."""
    scores, evidence, chosen = attribution_patching(lm, facts, seed, blocks=("mlp",), **params)
    return scores, {**evidence, "restricted_to": "MLP layers"}, chosen
