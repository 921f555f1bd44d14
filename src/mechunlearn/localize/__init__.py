"""Localization: which components carry a fact? (PAPER.md, "Localization")

``localize(lm, facts, method, seed, **params) -> Localization`` runs one method of ``METHODS``;
``select(loc, arch, budget | match) -> Selection`` cuts its scores to a trainable-parameter
budget (``budget.py``); ``scores.py`` documents how head and MLP scores aggregate.
"""

from __future__ import annotations

from functools import partial

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.localize import attribution, baselines, causal_tracing, fact_lookup
from mechunlearn.localize.base import FunctionLocalizer, Localization, Localizer
from mechunlearn.localize.budget import RULES, Selection, load_selection, select
from mechunlearn.localize.scores import GRANULARITIES
from mechunlearn.models.loading import LoadedModel


def _mlps_only(fn, defaults: dict):
    def run(lm, facts, seed, **params):
        scores, evidence, chosen = fn(lm, facts, seed, **params)
        return scores, {**evidence, "restricted_to": "MLP layers"}, chosen

    return run, defaults


_ct_mlp, _ct_mlp_defaults = _mlps_only(partial(causal_tracing.causal_tracing, heads=False),
                                       {k: v for k, v in causal_tracing.DEFAULTS.items() if k != "heads"})
_ap_mlp, _ap_mlp_defaults = _mlps_only(partial(attribution.attribution_patching, blocks=("mlp",)),
                                       {k: v for k, v in attribution.DEFAULTS.items() if k != "blocks"})

METHODS: dict[str, Localizer] = {
    m.name: m
    for m in (
        FunctionLocalizer("fact_lookup", "FLU: probes, extraction heads, MLP path patching into the receiver layer",
                          fact_lookup.fact_lookup, fact_lookup.DEFAULTS),
        FunctionLocalizer("causal_tracing", "ROME causal tracing per head and MLP (3 sigma subject noise, own P(true))",
                          causal_tracing.causal_tracing, causal_tracing.DEFAULTS),
        FunctionLocalizer("attribution_patching", "linear activation patching per head slice and MLP matrix",
                          attribution.attribution_patching, attribution.DEFAULTS),
        FunctionLocalizer("causal_tracing_mlps", "causal tracing restricted to MLP layers", _ct_mlp, _ct_mlp_defaults),
        FunctionLocalizer("attribution_patching_mlps", "attribution patching restricted to MLP matrices", _ap_mlp,
                          _ap_mlp_defaults),
        FunctionLocalizer("random", "seeded random matrices (every type, gate included)", baselines.random_components),
        FunctionLocalizer("random_mlps", "seeded random MLP layers", baselines.random_mlps),
        FunctionLocalizer("all_mlps", "every MLP matrix", baselines.all_mlps),
        FunctionLocalizer("everything", "every attention and MLP matrix (non-localized)", baselines.everything),
    )
}


def localize(lm: LoadedModel, facts: FactSet, method: str, seed: int = 0, **params) -> Localization:
    """Run one localization method on ``facts`` (the same facts for every method compared)."""
    if method not in METHODS:
        raise MechunlearnError(f"unknown localization method {method!r}: {', '.join(METHODS)}")
    return METHODS[method].localize(lm, facts, seed=seed, **params)


__all__ = [
    "GRANULARITIES", "METHODS", "RULES", "Localization", "Localizer", "Selection", "load_selection", "localize",
    "select",
]
