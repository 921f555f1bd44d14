from mechunlearn.models.components import Architecture, Component, HookPoint, architecture
from mechunlearn.models.hooks import (
    cache_activations,
    hooks,
    patch_activations,
    record_gradients,
)
from mechunlearn.models.loading import LoadedModel, from_model, load_model
from mechunlearn.models.scoring import Encoded, encode, last_token_logits

__all__ = [
    "Architecture", "Component", "Encoded", "HookPoint", "LoadedModel", "architecture", "cache_activations",
    "encode", "from_model", "hooks", "last_token_logits", "load_model", "patch_activations", "record_gradients",
]
