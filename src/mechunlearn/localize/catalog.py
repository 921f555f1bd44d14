"""The localization methods by name, importable without torch: each one's parameters' defaults and
what the rest of the run needs to know of it (its probe facts, its cost for the memory estimate,
its role in the comparisons, its report style). A run's config, the command line, the memory
estimate and the report read these declarations before any model is loaded; ``localize/methods.py``
runs the method's function, imported when it first runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mechunlearn.errors import MechunlearnError
from mechunlearn.registry import Registry, bind

if TYPE_CHECKING:
    from mechunlearn.models.memory import ModelShape

# "ours": FLU, the method every other is compared with, cut to its budget and run in variants;
# "baseline": compared only when a run's analysis names it
ROLES = ("ours", "output tracing", "random", "baseline")
# what FLU is compared against by default: output tracing and random components of the same budget
COMPARED_ROLES = ("output tracing", "random")


@dataclass(frozen=True)
class Cost:
    """One localization's rough pass counts and the batch rows its activations hold."""

    passes: dict[str, int]  # "forward" / "backward" -> model passes
    rows: int = 0  # rows of the largest forward batch without gradients
    grad_rows: int = 0  # rows of the largest batch that is backpropagated


@dataclass(frozen=True)
class ReportStyle:
    short: str  # terminal table columns
    label: str  # verdict sentences, legends, tables
    colour: str
    rank: int  # position in the report's tables and legends


@dataclass(frozen=True)
class LocalizerSpec:
    name: str
    description: str
    role: str  # one of ROLES
    style: ReportStyle
    # (shape, localization facts, probe facts, params) -> the cost of one localization
    cost: Callable[[ModelShape, int, int, dict], Cost]
    # fn(lm, facts, seed, **params) -> (scores, evidence, chosen); the built-ins are bound by name
    # (mechunlearn.registry.bind), so that this catalog needs no torch
    run: Callable
    defaults: dict = field(default_factory=dict)
    uses_probes: bool = False  # trains probes on localization.probe_facts facts (and plots their curves)
    default_run: bool = False  # among a run config's default methods
    # the trained parameters of a method defined by its size (exempt from the budget by default)
    own_size: Callable[[ModelShape], int] | None = None


CATALOG: Registry[LocalizerSpec] = Registry("localization method")
spec_of = CATALOG.find


def register(spec: LocalizerSpec) -> LocalizerSpec:
    if spec.role not in ROLES:
        raise MechunlearnError(f"localization method {spec.name!r}: role {spec.role!r} is not one of {ROLES}")
    return CATALOG.register(spec)


def method_defaults(method: str) -> dict:
    """The parameters ``method`` takes, with their defaults (``{}`` for an unknown name)."""
    return CATALOG[method].defaults if method in CATALOG else {}


def uses_probes(method: str) -> bool:
    return method in CATALOG and CATALOG[method].uses_probes


FACT_LOOKUP_DEFAULTS = {"top_heads": 10, "threshold": 0.02, "relative": 0.25, "min_probe_gain": 0.2, "plateau": 0.8,
                        "corrupt_pool": "subjects", "max_rows": 128, "probe_facts": None, "span": False}
CAUSAL_TRACING_DEFAULTS = {"noise_scale": 3.0, "n_noise": 1, "heads": True, "max_rows": 160, "progress": False}
ATTRIBUTION_DEFAULTS = {"batch_size": 32, "corrupt_pool": "subjects", "neurons": False, "blocks": ("attn", "mlp"),
                        "progress": False}


def _fact_lookup_cost(shape: ModelShape, n_facts: int, probe_facts: int, params: dict) -> Cost:
    """Probe passes over the probe facts, then each head and MLP patched on every fact."""
    max_rows = params.get("max_rows", FACT_LOOKUP_DEFAULTS["max_rows"])
    patched = (shape.n_layers * shape.n_heads + shape.n_layers) * n_facts
    return Cost({"forward": 2 + math.ceil(patched / max_rows) + math.ceil(probe_facts / 16)},
                rows=min(max_rows, patched))


def _causal_tracing_cost(heads: bool) -> Callable[[ModelShape, int, int, dict], Cost]:
    def cost(shape: ModelShape, n_facts: int, probe_facts: int, params: dict) -> Cost:
        """Batched restorations of each head and MLP (each MLP) per noise sample."""
        max_rows = params.get("max_rows", CAUSAL_TRACING_DEFAULTS["max_rows"])
        n_noise = params.get("n_noise", CAUSAL_TRACING_DEFAULTS["n_noise"])
        restored = shape.n_layers * (shape.n_heads + 2 if heads else 1) * n_facts
        return Cost({"forward": 1 + n_noise * (1 + math.ceil(restored / max_rows))}, rows=min(max_rows, restored))

    return cost


def _attribution_cost(shape: ModelShape, n_facts: int, probe_facts: int, params: dict) -> Cost:
    """A clean and a corrupted forward pass and one backward pass per batch."""
    batch = params.get("batch_size", ATTRIBUTION_DEFAULTS["batch_size"])
    batches = math.ceil(n_facts / batch)
    return Cost({"forward": 2 * batches, "backward": batches}, grad_rows=min(batch, n_facts))


def _no_model_pass(shape: ModelShape, n_facts: int, probe_facts: int, params: dict) -> Cost:
    return Cost({})


def _bound(target: str) -> Callable:
    return bind("mechunlearn.localize." + target)


for _spec in [
    LocalizerSpec("fact_lookup", "FLU: probes, extraction heads, MLP path patching into the receiver layer",
                  "ours", ReportStyle("FLU", "FLU", "#1f77b4", 0), _fact_lookup_cost, _bound("fact_lookup:fact_lookup"),
                  FACT_LOOKUP_DEFAULTS,
                  uses_probes=True, default_run=True),
    LocalizerSpec("causal_tracing", "ROME causal tracing per head and MLP (3 sigma subject noise, own P(true))",
                  "output tracing", ReportStyle("CT", "causal tracing", "#ff7f0e", 1), _causal_tracing_cost(True),
                  _bound("causal_tracing:causal_tracing"), CAUSAL_TRACING_DEFAULTS, default_run=True),
    LocalizerSpec("attribution_patching", "linear activation patching per head slice and MLP matrix",
                  "output tracing", ReportStyle("AP", "attribution patching", "#2ca02c", 2), _attribution_cost,
                  _bound("attribution:attribution_patching"), ATTRIBUTION_DEFAULTS, default_run=True),
    LocalizerSpec("causal_tracing_mlps", "causal tracing restricted to MLP layers",
                  "output tracing", ReportStyle("CT-mlp", "causal tracing (MLPs)", "#bcbd22", 7),
                  _causal_tracing_cost(False), _bound("causal_tracing:causal_tracing_mlps"),
                  {k: v for k, v in CAUSAL_TRACING_DEFAULTS.items() if k != "heads"}),
    LocalizerSpec("attribution_patching_mlps", "attribution patching restricted to MLP matrices",
                  "output tracing", ReportStyle("AP-mlp", "attribution patching (MLPs)", "#17becf", 8),
                  _attribution_cost, _bound("attribution:attribution_patching_mlps"),
                  {k: v for k, v in ATTRIBUTION_DEFAULTS.items() if k != "blocks"}),
    LocalizerSpec("random", "seeded random matrices (every type, gate included)",
                  "random", ReportStyle("random", "random", "#d62728", 3), _no_model_pass,
                  _bound("baselines:random_components"), default_run=True),
    LocalizerSpec("random_mlps", "seeded random MLP layers",
                  "random", ReportStyle("random MLPs", "random MLPs", "#e377c2", 6), _no_model_pass,
                  _bound("baselines:random_mlps")),
    LocalizerSpec("all_mlps", "every MLP matrix", "baseline", ReportStyle("all MLPs", "all MLPs", "#9467bd", 4),
                  _no_model_pass, _bound("baselines:all_mlps"), default_run=True,
                  own_size=lambda shape: shape.mlp_params()),
    LocalizerSpec("everything", "every attention and MLP matrix (non-localized)",
                  "baseline", ReportStyle("everything", "everything", "#8c564b", 5), _no_model_pass,
                  _bound("baselines:everything"), own_size=lambda shape: shape.block_params()),
]:
    register(_spec)

METHOD_NAMES = tuple(CATALOG)  # the built-in methods
OURS = next(name for name, spec in CATALOG.items() if spec.role == "ours")
DEFAULT_METHODS = tuple(name for name, spec in CATALOG.items() if spec.default_run)
SIZED = tuple(name for name, spec in CATALOG.items() if spec.own_size is not None)
