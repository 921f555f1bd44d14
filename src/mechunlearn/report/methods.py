"""The one declaration of how the report, its plots and the terminal summary name and colour the
localization methods (``mechunlearn.localize.METHODS`` holds what each method does)."""

from __future__ import annotations

from dataclasses import dataclass

BASE = "unedited"  # the model before editing: a cell of every setting, never a compared arm
OURS = "fact_lookup"


@dataclass(frozen=True)
class MethodStyle:
    name: str
    short: str  # terminal table columns
    label: str  # verdict sentences, legends, tables
    colour: str
    # "ours" | "output tracing" and "random" (what FLU is compared against by default: random
    # components of the same budget) | "baseline" | "reference"
    role: str


STYLES: dict[str, MethodStyle] = {
    s.name: s
    for s in [
        MethodStyle(OURS, "FLU", "FLU", "#1f77b4", "ours"),
        MethodStyle("causal_tracing", "CT", "causal tracing", "#ff7f0e", "output tracing"),
        MethodStyle("attribution_patching", "AP", "attribution patching", "#2ca02c", "output tracing"),
        MethodStyle("random", "random", "random", "#d62728", "random"),
        MethodStyle("all_mlps", "all MLPs", "all MLPs", "#9467bd", "baseline"),
        MethodStyle("everything", "everything", "everything", "#8c564b", "baseline"),
        MethodStyle("random_mlps", "random MLPs", "random MLPs", "#e377c2", "random"),
        MethodStyle("causal_tracing_mlps", "CT-mlp", "causal tracing (MLPs)", "#bcbd22", "output tracing"),
        MethodStyle("attribution_patching_mlps", "AP-mlp", "attribution patching (MLPs)", "#17becf",
                    "output tracing"),
        MethodStyle(BASE, "before", "unedited", "#7f7f7f", "reference"),
    ]
}
OUTPUT_TRACING = tuple(s.name for s in STYLES.values() if s.role == "output tracing")
COMPARED = tuple(s.name for s in STYLES.values() if s.role in ("output tracing", "random"))
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")


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
    if method in STYLES:
        return STYLES[method]
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
    declared = list(STYLES)
    return sorted(set(methods), key=lambda m: (m == BASE, m not in STYLES, declared.index(m) if m in STYLES else 0, m))
