"""Where a model comes from, and the cheap checks ``load_model`` runs before loading anything
(``check_model_source``, ``resolve_device``): importable without torch or transformers, so that
the command line refuses a bad path or device at once (``models/loading.py`` re-exports them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mechunlearn.errors import ModelLoadError, UnsupportedArchitectureError
from mechunlearn.models.names import SUPPORTED_MODEL_TYPES

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "gemma-3-270m"


def cache_dir() -> Path:
    root = os.environ.get("MECHUNLEARN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mechunlearn"


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"no such GGUF file: {path}")
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:4] != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    if len(head) < 24:
        raise ModelLoadError(f"{path} is truncated ({len(head)} bytes): download it again")


def _check_safetensors(folder: Path) -> None:
    """Local weights must be safetensors (a .bin is a pickle: never loaded) and readable: a
    truncated or corrupt file is refused before anything is loaded."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f"only {', '.join(pickles[:3])} (pickle files, never loaded: they can run code)" if pickles else "none"
        raise ModelLoadError(f"{folder} holds no .safetensors weights ({found}); save the model with "
                             "save_pretrained(..., safe_serialization=True) from a source you trust")
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.metadata()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{path} is not a readable safetensors file ({str(e).strip()[:160]}); "
                                 "it may be truncated: copy or download it again") from None


def resolve_device(device: str | None) -> str:
    """``None``: cuda when available, else cpu; otherwise a device that exists here."""
    if device == "cpu":
        return device  # always there: no need to import torch to say so
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                                 f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return device


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def check_model_source(spec: str) -> None:
    """The cheap checks of ``load_model`` (nothing is loaded): the path, folder or GGUF file
    exists and is readable; a Hub id is cached when offline."""
    if spec == DEFAULT_MODEL:
        return
    if not spec.strip():
        raise ModelLoadError("the model name is empty: give 'default', a Hub id, a local HF folder or a .gguf file")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        _check_gguf(path)
    elif path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file, not a model folder (a Hugging Face folder or a .gguf file)")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
        _check_supported(str(path))
        _check_safetensors(path)
    elif not _looks_like_hub_id(spec):
        raise ModelLoadError(f"no such model folder or file: {spec}")
    elif _offline() and not _hub_cached(spec):
        raise ModelLoadError(f"{spec!r} is neither a local folder nor a Hub model in the cache (offline: "
                             "HF_HUB_OFFLINE is set); pass a local folder, or download it with network access")


def _check_supported(source: str, **kwargs) -> None:
    try:  # our list before transformers' "upgrade transformers" for a type it does not know
        declared = json.loads((Path(source) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        declared = None
    if isinstance(declared, str) and declared not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: model type {declared!r} is not supported; supported: " + ", ".join(SUPPORTED_MODEL_TYPES))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except ValueError as e:  # a config.json that is not JSON
        raise UnsupportedArchitectureError(f"{source}: {e}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: model type {model_type!r} is not supported; supported: " + ", ".join(SUPPORTED_MODEL_TYPES)
        )


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) <= 2 and all(parts) and not spec.startswith((".", "~")) and not spec.endswith(".gguf")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # what Accelerate can plan by name
