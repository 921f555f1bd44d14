"""How the report, its plots and the terminal summary name, colour and order the localization
methods: each method declares its style and role in ``mechunlearn.localize.catalog`` (which also
says what each method does); here are the unedited model, FLU variants and undeclared methods."""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.localize.catalog import CATALOG, COMPARED_ROLES
from mechunlearn.localize.catalog import OURS as OURS  # re-exported: the report names FLU by it

BASE = "unedited"  # the model before editing: a cell of every setting, never a compared arm


@dataclass(frozen=True)
class MethodStyle:
    name: str
    short: str  # terminal table columns
    label: str  # verdict sentences, legends, tables
    colour: str
    role: str  # a role of localize/catalog.py's ROLES, "reference" (the unedited model) or "other" (undeclared)


_REFERENCE = MethodStyle(BASE, "before", "unedited", "#7f7f7f", "reference")
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")


def _declared() -> list[str]:
    """The declared methods in the report's order."""
    return sorted(CATALOG, key=lambda m: CATALOG[m].style.rank)


def compared() -> tuple[str, ...]:
    """What FLU is compared against by default: every output-tracing method and random components."""
    return tuple(m for m in _declared() if CATALOG[m].role in COMPARED_ROLES)


VARIANT = "@"  # "causal_tracing@span": causal tracing cut to the budget of FLU variant "span"


def split_arm(arm: str) -> tuple[str, str]:
    """An arm's method and the FLU variant whose budget it shares ("" for the run's own FLU)."""
    method, _, variant = arm.partition(VARIANT)
    return method, variant


def style(method: str) -> MethodStyle:
    """A declared method's style; an undeclared one (a user's own method) gets its own name and a
    spare colour that depends only on the name, so it is the same in every plot. An arm of an FLU
    variant is its method's style, named with the variant."""
    base, variant = split_arm(method)
    if variant:
        own = style(base)
        spare = _SPARE[sum(method.encode()) % len(_SPARE)]
        return MethodStyle(method, f"{own.short}@{variant}", f"{own.label} [{variant}]", spare, own.role)
    if method == BASE:
        return _REFERENCE
    if method in CATALOG:
        spec = CATALOG[method]
        return MethodStyle(method, spec.style.short, spec.style.label, spec.style.colour, spec.role)
    spare = _SPARE[sum(method.encode()) % len(_SPARE)]
    return MethodStyle(method, method.replace("_", " "), method.replace("_", " "), spare, "other")


def label(method: str) -> str:
    return style(method).label


def short(method: str) -> str:
    return style(method).short


def colour(method: str) -> str:
    return style(method).colour


def ordered(methods) -> list[str]:
    """FLU first, then the declared order, then undeclared methods by name, the unedited model last."""
    declared = _declared()
    return sorted(set(methods),
                  key=lambda m: (m == BASE, m not in declared, declared.index(m) if m in declared else 0, m))
