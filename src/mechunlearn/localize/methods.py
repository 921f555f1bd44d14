"""``METHODS``: every localization method of ``catalog.py`` bound to its function, and
``localize``, which runs one of them."""

from __future__ import annotations

from functools import partial

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.localize import attribution, baselines, causal_tracing, fact_lookup
from mechunlearn.localize.base import FunctionLocalizer, Localization, Localizer
from mechunlearn.localize.catalog import CATALOG, METHOD_NAMES
from mechunlearn.models.loading import LoadedModel


def _mlps_only(fn):
    def run(lm, facts, seed, **params):
        scores, evidence, chosen = fn(lm, facts, seed, **params)
        return scores, {**evidence, "restricted_to": "MLP layers"}, chosen

    return run


FUNCTIONS = {
    "fact_lookup": fact_lookup.fact_lookup,
    "causal_tracing": causal_tracing.causal_tracing,
    "attribution_patching": attribution.attribution_patching,
    "causal_tracing_mlps": _mlps_only(partial(causal_tracing.causal_tracing, heads=False)),
    "attribution_patching_mlps": _mlps_only(partial(attribution.attribution_patching, blocks=("mlp",))),
    "random": baselines.random_components,
    "random_mlps": baselines.random_mlps,
    "all_mlps": baselines.all_mlps,
    "everything": baselines.everything,
}
assert list(FUNCTIONS) == list(METHOD_NAMES), "every method of localize/catalog.py needs its function here"

METHODS: dict[str, Localizer] = {
    name: FunctionLocalizer(name, CATALOG[name].description, function, CATALOG[name].defaults)
    for name, function in FUNCTIONS.items()
}


def localize(lm: LoadedModel, facts: FactSet, method: str, seed: int = 0, **params) -> Localization:
    """Run one localization method on ``facts`` (the same facts for every method compared)."""
    if method not in METHODS:
        raise MechunlearnError(f"unknown localization method {method!r}: {', '.join(METHODS)}")
    return METHODS[method].localize(lm, facts, seed=seed, **params)
