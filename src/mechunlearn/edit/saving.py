"""Saving an edit: the whole model as a normal HF checkpoint, a small diff holding only the
trained slices (and what they were trained from), and the training log.

``DIR/model``             HF safetensors checkpoint + tokenizer (``AutoModelForCausalLM`` loads it)
``DIR/diff.safetensors``  the trained slices; metadata: base model, hash of its weights, components, config
``DIR/train_log.json``    components, parameter count, config, facts, split, loss history, seconds

The directory appears only when everything in it is written; the base model's files are never
touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mechunlearn.edit.files import DIFF_FILE, LOG_FILE, MODEL_DIR, diff_file  # noqa: F401  (re-exported)
from mechunlearn.errors import MechunlearnError
from mechunlearn.io import atomic_dir, write_json_atomic
from mechunlearn.models.components import ParamSlice
from mechunlearn.models.loading import LoadedModel

DIFF_FORMAT = "mechunlearn-diff/1"


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (names, dtypes, shapes and bytes); a tensor
    tied to one already hashed (Gemma's lm_head) is hashed by name only."""
    h = hashlib.sha256()
    seen: set[tuple[int, tuple]] = set()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        if t.is_meta:
            raise MechunlearnError(f"weight {name} is not in memory (offloaded to disk by a device_map): a model "
                                   "is edited with every weight on a GPU or in CPU memory; give device_map no 'disk'")
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() == 0 or key in seen:
            continue
        seen.add(key)
        data = t.contiguous().cpu().reshape(-1).view(torch.uint8)
        h.update(memoryview(data.numpy()))
    return h.hexdigest()


def _key(s: ParamSlice) -> str:
    return f"{s.param}[{s.dim}:{s.start}:{s.stop}]"


def _results(result) -> list:
    results = list(result) if isinstance(result, list | tuple) else [result]
    if not results:
        raise MechunlearnError("nothing to save: no training result")
    if len({r.base_hash for r in results}) != 1:
        raise MechunlearnError("these results start from different base weights; save each edit separately")
    return results


def _union_slices(results) -> list[ParamSlice]:
    return list(dict.fromkeys(s for r in results for s in r.slices))


def write_diff(path: str | Path, lm: LoadedModel, result, base_spec: str | None = None) -> Path:
    """Write the current values of the trained slices of ``lm`` (one result, or the list of a
    sequential edit) with their metadata, atomically."""
    results = _results(result)
    params = dict(lm.model.named_parameters())
    slices = _union_slices(results)
    tensors = {_key(s): s.view(params[s.param].detach()).contiguous().cpu() for s in slices}
    components = list(dict.fromkeys(c for r in results for c in r.components))
    metadata = {
        "format": DIFF_FORMAT,
        "base_model": base_spec or lm.spec,
        "base_source": str(lm.source),
        "base_hash": results[0].base_hash,
        "dtype": str(next(iter(params.values())).dtype).removeprefix("torch."),
        "components": json.dumps(components),
        "slices": json.dumps([{"key": _key(s), "param": s.param, "dim": s.dim, "start": s.start, "stop": s.stop}
                              for s in slices]),
        "config": json.dumps([r.config.to_json() for r in results] if len(results) > 1 else results[0].config.to_json()),
        "n_params": str(sum(t.numel() for t in tensors.values())),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


@dataclass
class EditDiff:
    metadata: dict
    slices: list[ParamSlice]
    tensors: dict[str, torch.Tensor]

    @property
    def base_model(self) -> str:
        return self.metadata["base_model"]

    @property
    def base_hash(self) -> str:
        return self.metadata["base_hash"]

    @property
    def components(self) -> list[str]:
        return json.loads(self.metadata["components"])

    @property
    def dtype(self) -> str:
        return self.metadata.get("dtype", "float32")


def read_diff(path: str | Path) -> EditDiff:
    path = diff_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise MechunlearnError(f"{path} is not a safetensors file: {e}") from None
    if metadata.get("format") != DIFF_FORMAT:
        raise MechunlearnError(f"{path} is not a mechunlearn diff (format {metadata.get('format')!r})")
    absent = [k for k in ("base_model", "base_hash", "slices", "components") if k not in metadata]
    if absent:
        raise MechunlearnError(f"{path} is damaged: its metadata lacks {absent}; write the edit again")
    slices = _parse_slices(path, metadata)
    missing = [_key(s) for s in slices if _key(s) not in tensors]
    if missing:
        raise MechunlearnError(f"{path} is damaged: tensors missing for {missing[:3]}")
    return EditDiff(metadata, slices, tensors)


def _parse_slices(path: Path, metadata: dict) -> list[ParamSlice]:
    try:
        records = json.loads(metadata["slices"])
        components = json.loads(metadata["components"])
        slices = [ParamSlice(str(r["param"]), int(r["dim"]), int(r["start"]), int(r["stop"])) for r in records]
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
        raise MechunlearnError(f"{path} is damaged: its metadata 'slices'/'components' do not parse ({e}); "
                               "write the edit again") from None
    if not isinstance(components, list) or not slices:
        raise MechunlearnError(f"{path} is damaged: it records no trained slices; write the edit again")
    return slices


@torch.no_grad()
def apply_diff(base_lm: LoadedModel, diff_path: str | Path, verify: bool = True) -> LoadedModel:
    """Rebuild an edited model from its base: checks that the base's weights hash to the one the
    diff was made from, then writes the trained slices into ``base_lm.model`` (in place)."""
    diff = read_diff(diff_path)
    if verify:
        actual = weights_hash(base_lm.model)
        if actual != diff.base_hash:
            raise MechunlearnError(
                f"this diff was made from other base weights ({diff.base_model!r}, {diff.dtype}, "
                f"hash {diff.base_hash[:12]}...); the given model {base_lm.spec!r} hashes to {actual[:12]}..."
            )
    params = dict(base_lm.model.named_parameters())
    for s in diff.slices:
        if s.param not in params:
            raise MechunlearnError(f"the model has no parameter {s.param} that the diff changes")
        target = s.view(params[s.param].data)
        value = diff.tensors[_key(s)]
        if tuple(target.shape) != tuple(value.shape):
            raise MechunlearnError(f"{_key(s)}: the diff holds shape {tuple(value.shape)}, the model {tuple(target.shape)}")
        target.copy_(value.to(device=target.device, dtype=target.dtype))
    return LoadedModel(base_lm.model, base_lm.tokenizer, f"{base_lm.spec}+{Path(diff_path).name}", base_lm.source)


def check_output_dir(lm: LoadedModel, out_dir: str | Path, expected: tuple[str, ...]) -> None:
    """Refuse an output folder that holds or lies inside the base model's files, or an existing
    folder that does not look like an earlier output of the same kind (it would be replaced)."""
    out = Path(out_dir).expanduser().resolve()
    source = Path(str(lm.source)).expanduser()
    if source.exists():
        src = source.resolve()
        src_dir = src if src.is_dir() else src.parent
        if out == src_dir or src_dir in out.parents or out in src_dir.parents:
            raise MechunlearnError(f"{out_dir} would overwrite or contain the base model's files ({source}); "
                                   "choose another folder")
    if out.exists():
        if not out.is_dir():
            raise MechunlearnError(f"{out_dir} exists and is not a folder")
        if any(out.iterdir()) and not any((out / name).exists() for name in expected):
            raise MechunlearnError(f"{out_dir} exists, is not empty and holds no {' / '.join(expected)}: "
                                   "it would be replaced; choose a new folder")


def save_model(lm: LoadedModel, folder: Path) -> None:
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)


def train_log(lm: LoadedModel, result, base_spec: str, facts: dict | None = None) -> dict:
    """The ``train_log.json`` record of one edit (or of a sequential edit's list of results)."""
    results = _results(result)
    params = dict(lm.model.named_parameters())
    history = [{"block": i + 1, **h} if len(results) > 1 else h for i, r in enumerate(results) for h in r.history]
    return {
        "model": base_spec,
        "components": list(dict.fromkeys(c for r in results for c in r.components)),
        "n_trained_params": sum(s.view(params[s.param]).numel() for s in _union_slices(results)),
        "config": results[0].config.to_json() if len(results) == 1 else [r.config.to_json() for r in results],
        "facts": facts or {},
        "split": results[0].split if len(results) == 1 else [r.split for r in results],
        "history": history,
        "target": results[0].target if len(results) == 1 else [r.target for r in results],
        "seconds": sum(r.seconds for r in results),
        "base_hash": results[0].base_hash,
        "optimizer_state_numel": results[-1].optimizer_state_numel,
        "world_size": results[0].world_size,
        "notes": list(dict.fromkeys(n for r in results for n in r.notes)),
    }


def save_edit(lm: LoadedModel, result, out_dir: str | Path, base_spec: str | None = None,
              facts: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``DIR/model``, ``DIR/diff.safetensors`` and ``DIR/train_log.json`` (all or nothing).
    ``result`` is a :class:`TrainResult` or the list of a sequential edit."""
    out_dir = Path(out_dir)
    check_output_dir(lm, out_dir, (LOG_FILE, DIFF_FILE))
    base_spec = base_spec or lm.spec
    log = {**train_log(lm, result, base_spec, facts), **(extra or {})}
    with atomic_dir(out_dir) as tmp:
        save_model(lm, tmp / MODEL_DIR)
        write_diff(tmp / DIFF_FILE, lm, result, base_spec)
        write_json_atomic(tmp / LOG_FILE, log)
    return out_dir
