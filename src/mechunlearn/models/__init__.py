"""Models: loading, components (the matrices a localization names), hooks and scoring. The
names below are imported on first use (``mechunlearn._lazy``)."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.models.components", ("Architecture", "Component", "HookPoint", "architecture")),
    ("mechunlearn.models.hooks", ("cache_activations", "hooks", "patch_activations", "record_gradients")),
    ("mechunlearn.models.loading", ("LoadedModel", "from_model", "load_model")),
    ("mechunlearn.models.scoring", ("Encoded", "encode", "last_token_logits")),
))

__all__ = [
    "Architecture", "Component", "Encoded", "HookPoint", "LoadedModel", "architecture", "cache_activations",
    "encode", "from_model", "hooks", "last_token_logits", "load_model", "patch_activations", "record_gradients",
]
