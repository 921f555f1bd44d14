"""The ``Localization`` record, the ``Localizer`` protocol and the method registry.

A localization scores components by name (``blocks.3.mlp.out``, ``blocks.2.attn.q.h1``, see
``mechunlearn.models.components``) and keeps the evidence that produced the scores. It never
chooses a parameter budget: ``mechunlearn.localize.budget.select`` does that.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.io import read_json, write_json_atomic

if TYPE_CHECKING:
    from mechunlearn.models.loading import LoadedModel

FORMAT_VERSION = 1


@dataclass
class Localization:
    method: str
    params: dict
    fact_ids: list[str]
    scores: dict[str, float]  # component name -> score (see scores.py for how they aggregate)
    evidence: dict  # JSON-able: probe curves, patching tables, the aggregation rule
    model_spec: str
    chosen: list[str] = field(default_factory=list)  # the method's own choice (FLU layers, all MLPs); [] = ranking only

    def to_json(self) -> dict:
        return {"format": "mechunlearn.localization", "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Localization:
        if data.get("format") != "mechunlearn.localization":
            raise MechunlearnError("not a localization JSON (missing format 'mechunlearn.localization')")
        fields = ("method", "params", "fact_ids", "scores", "evidence", "model_spec", "chosen")
        missing = [k for k in fields[:6] if k not in data]
        if missing:
            raise MechunlearnError(f"localization JSON lacks {missing}")
        return cls(**{k: data[k] for k in fields if k in data})

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Localization:
        path = Path(path)
        if not path.is_file():
            raise MechunlearnError(f"no such localization file: {path}")
        return cls.from_json(read_json(path))


class Localizer(Protocol):
    name: str
    description: str

    def localize(self, lm: LoadedModel, facts: FactSet, seed: int = 0, **params) -> Localization: ...


@dataclass(frozen=True)
class FunctionLocalizer:
    """A localizer backed by one function ``fn(lm, facts, seed, **params) -> (scores, evidence,
    chosen)``; ``defaults`` are its parameters (recorded in the Localization)."""

    name: str
    description: str
    fn: object
    defaults: dict = field(default_factory=dict)

    def localize(self, lm: LoadedModel, facts: FactSet, seed: int = 0, **params) -> Localization:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise MechunlearnError(f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}")
        full = {**self.defaults, **params}
        start = time.perf_counter()
        scores, evidence, chosen = self.fn(lm, facts, seed, **full)
        evidence = {**evidence, "seconds": round(time.perf_counter() - start, 2), "model": _model_info(lm)}
        return Localization(
            method=self.name,
            params=json.loads(json.dumps({**full, "seed": seed}, default=_jsonable)),  # as it reads back from JSON
            fact_ids=[f.id for f in facts],
            scores={k: float(v) for k, v in scores.items()},
            evidence=evidence,
            model_spec=lm.spec,
            chosen=list(chosen),
        )


def _jsonable(value):
    """Fact sets passed as parameters (FLU's ``probe_facts``) are recorded by name and ids."""
    if isinstance(value, FactSet):
        return {"fact_set": value.name, "fact_ids": [f.id for f in value]}
    raise TypeError(f"parameter of type {type(value).__name__} cannot be recorded in JSON")


SHAPE_KEYS = ("model_type", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_mlp")


def _model_info(lm: LoadedModel) -> dict:
    from mechunlearn.edit.saving import weights_hash

    a = lm.arch
    return {**{k: getattr(a, k) for k in SHAPE_KEYS}, "source": lm.source,
            "dtype": str(lm.model.dtype).removeprefix("torch."), "weights_sha256": weights_hash(lm.model)}


def _describe(info: dict) -> str:
    return (f"{info.get('model_type')} ({info.get('n_layers')} layers, d_model {info.get('d_model')}, d_mlp "
            f"{info.get('d_mlp')}, {info.get('n_heads')}/{info.get('n_kv_heads')} heads; {info.get('source')})")


def model_mismatch(recorded: dict | None, arch, source: str = "", dtype: str | None = None,
                   weights: str | None = None) -> str | None:
    """How the model a localization records (``evidence["model"]``) differs from this one, in
    words; None when it fits or records none. Weights are compared only at the same dtype."""
    if not recorded:
        return None
    here = {**{k: getattr(arch, k) for k in SHAPE_KEYS}, "source": source}
    if any(k in recorded and recorded[k] != here[k] for k in SHAPE_KEYS):
        return f"it was made on {_describe(recorded)}, not on this model, {_describe(here)}"
    theirs = recorded.get("weights_sha256")
    if weights and theirs and recorded.get("dtype") == dtype and theirs != weights:
        return (f"it was made on other weights ({recorded.get('source')}, sha256 {theirs[:12]}) than this model's "
                f"({source}, sha256 {weights[:12]})")
    return None
