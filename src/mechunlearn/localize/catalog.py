"""The localization methods by name, with their parameters' defaults, importable without torch:
a run's config and the command line check method names and parameters before any model is
loaded. ``localize/methods.py`` binds each name to its function (``METHODS``)."""

from __future__ import annotations

FACT_LOOKUP_DEFAULTS = {"top_heads": 10, "threshold": 0.02, "relative": 0.25, "min_probe_gain": 0.2, "plateau": 0.8,
                        "corrupt_pool": "subjects", "max_rows": 128, "probe_facts": None, "span": False}
CAUSAL_TRACING_DEFAULTS = {"noise_scale": 3.0, "n_noise": 1, "heads": True, "max_rows": 160, "progress": False}
ATTRIBUTION_DEFAULTS = {"batch_size": 32, "corrupt_pool": "subjects", "neurons": False, "blocks": ("attn", "mlp"),
                        "progress": False}

# name -> (description, parameter defaults), in the order ``METHODS`` lists them
CATALOG: dict[str, tuple[str, dict]] = {
    "fact_lookup": ("FLU: probes, extraction heads, MLP path patching into the receiver layer",
                    FACT_LOOKUP_DEFAULTS),
    "causal_tracing": ("ROME causal tracing per head and MLP (3 sigma subject noise, own P(true))",
                       CAUSAL_TRACING_DEFAULTS),
    "attribution_patching": ("linear activation patching per head slice and MLP matrix", ATTRIBUTION_DEFAULTS),
    "causal_tracing_mlps": ("causal tracing restricted to MLP layers",
                            {k: v for k, v in CAUSAL_TRACING_DEFAULTS.items() if k != "heads"}),
    "attribution_patching_mlps": ("attribution patching restricted to MLP matrices",
                                  {k: v for k, v in ATTRIBUTION_DEFAULTS.items() if k != "blocks"}),
    "random": ("seeded random matrices (every type, gate included)", {}),
    "random_mlps": ("seeded random MLP layers", {}),
    "all_mlps": ("every MLP matrix", {}),
    "everything": ("every attention and MLP matrix (non-localized)", {}),
}
METHOD_NAMES = tuple(CATALOG)


def method_defaults(method: str) -> dict:
    """The parameters ``method`` takes, with their defaults (``{}`` for an unknown name)."""
    return CATALOG[method][1] if method in CATALOG else {}
