"""How component scores are written and aggregated: one rule for every method.

Every score is an effect on the method's normalised metric (a fraction of the whole
corruption's effect). Methods write:

* whole matrices ``blocks.L.attn.{q,k,v,o}`` and ``blocks.L.mlp.{in,gate,out}``: the signed
  NET effect of the whole matrix. For causal tracing every attention matrix of layer L carries
  the restoration of the whole attention output (all heads at once) and every MLP matrix the
  restoration of the MLP output; attribution patching writes each matrix's attribution (the
  signed sum over its heads or neurons: the estimate is linear, so this is the attribution of
  patching the whole matrix at once).
* units: heads ``blocks.L.attn.M.hH`` (causal tracing: one restoration per query head, written
  to its q and o slices; a KV head, shared by several query heads under GQA, gets the sum of
  |score| of the query heads it serves) and neurons ``blocks.L.mlp.M.nN``; they are only used
  at head/neuron granularity.
* baselines may write whole matrices only.

Aggregates (one scale for attention and MLPs: the absolute net effect of what is selected):

* layer: |net effect of the block| = |s(o)| for attention, |s(out)| for the MLP (the block's
  output passes through that matrix). Never a sum of |head| scores: heads of opposite sign
  cancel in the block's output, and summing absolute values would inflate attention up to
  n_heads times against the MLP's single number. A block with no output-matrix score falls
  back to its largest matrix score. A layer candidate is the whole block (all its matrices).
* matrix: |s(M)|. Without a whole-matrix score (an older localization), |signed sum of its
  unit scores| (exact for attribution patching, the first-order net for causal tracing).
* head / neuron: |s(M.unit)| of each slice where unit scores exist; anything without finer
  scores stays at the finest level it has.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.names import ATTN_MATRICES, MLP_MATRICES

if TYPE_CHECKING:
    from mechunlearn.models.components import Architecture

GRANULARITIES = ("layer", "matrix", "head", "neuron")
AGGREGATION = (
    "one scale for attention and MLPs, the absolute net effect: layer = |score of the whole block's output| "
    "(attention: |score(o)|, all heads at once; MLP: |score(out)|), never a sum of |head| scores; "
    "matrix = |score(M)| (without one: |signed sum of its unit scores|); head/neuron = |score| of each slice "
    "(see mechunlearn.localize.scores)"
)
_KEY = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.(q|k|v|o|in|gate|out)(?:\.(?:h|n)(\d+))?$")
_ORDER = {m: i for i, m in enumerate((*ATTN_MATRICES, *MLP_MATRICES))}


@dataclass(frozen=True)
class Candidate:
    label: str
    components: tuple[str, ...]
    score: float
    order: tuple  # tie-break: layer, block, matrix, unit

    def n_params(self, arch: Architecture) -> int:
        return sum(arch.component(c).n_params for c in self.components)


@dataclass
class _MatrixScores:
    whole: float | None = None
    units: dict[int, float] | None = None


def _parse(scores: Mapping[str, float], arch: Architecture | None) -> dict[tuple[int, str, str], _MatrixScores]:
    table: dict[tuple[int, str, str], _MatrixScores] = defaultdict(_MatrixScores)
    for key, value in scores.items():
        m = _KEY.match(key)
        if not m:
            raise MechunlearnError(f"score key {key!r} is not a component name")
        if arch is not None:
            arch.component(key)  # raises if this model has no such component (a localization of another model)
        layer, block, matrix, unit = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        entry = table[(layer, block, matrix)]
        if unit is None:
            entry.whole = float(value)
        else:
            entry.units = entry.units or {}
            entry.units[int(unit)] = float(value)
    return table


def _matrix_score(entry: _MatrixScores) -> float:
    if entry.whole is not None:
        return abs(entry.whole)
    return abs(sum((entry.units or {}).values()))


def _block_score(table, layer: int, block: str) -> float:
    out = table.get((layer, block, "o" if block == "attn" else "out"))
    if out is not None:
        return _matrix_score(out)
    present = [e for (L, b, _), e in table.items() if L == layer and b == block]
    return max(_matrix_score(e) for e in present)


def candidates(scores: Mapping[str, float], arch: Architecture, granularity: str) -> list[Candidate]:
    if granularity not in GRANULARITIES:
        raise MechunlearnError(f"unknown granularity {granularity!r}: {GRANULARITIES}")
    table = _parse(scores, arch)
    out: list[Candidate] = []
    if granularity == "layer":
        for layer, block in sorted({(L, b) for L, b, _ in table}, key=lambda x: (x[0], x[1] != "attn")):
            names = tuple(c.name for c in arch.matrices([layer], blocks=(block,)))
            out.append(Candidate(f"blocks.{layer}.{block}", names, _block_score(table, layer, block),
                                 (layer, block != "attn")))
        return out
    for (layer, block, matrix), entry in sorted(table.items(), key=lambda kv: (kv[0][0], _ORDER[kv[0][2]])):
        name = f"blocks.{layer}.{block}.{matrix}"
        split = entry.units and (
            (granularity in ("head", "neuron") and block == "attn") or (granularity == "neuron" and block == "mlp"))
        if split:
            prefix = "h" if block == "attn" else "n"
            for u, v in sorted(entry.units.items()):
                unit = f"{name}.{prefix}{u}"
                out.append(Candidate(unit, (unit,), abs(v), (layer, block != "attn", _ORDER[matrix], u)))
        else:
            out.append(Candidate(name, (name,), _matrix_score(entry), (layer, block != "attn", _ORDER[matrix], -1)))
    return out


def layer_table(scores: Mapping[str, float], n_layers: int) -> dict[str, list[float | None]]:
    """Per matrix type, the matrix-granularity score of every layer (None where unscored): the
    heatmap's rows. Matrix types no key mentions are left out."""
    table = _parse(scores, None)
    types = [m for m in (*ATTN_MATRICES, *MLP_MATRICES) if any(k[2] == m for k in table)]
    return {m: [(_matrix_score(table[(L, b, m)]) if (L, b, m) in table else None) for L in range(n_layers)]
            for m in types for b in ["attn" if m in ATTN_MATRICES else "mlp"]}


def head_and_mlp_scores(arch: Architecture, head_scores: Mapping[tuple[int, int], float],
                        mlp_scores: Mapping[int, float],
                        attn_scores: Mapping[int, float] | None = None) -> dict[str, float]:
    """Component scores from one number per (layer, query head), per MLP layer and per whole
    attention layer (all heads at once: written to every attention matrix of the layer)."""
    out: dict[str, float] = {}
    for L, s in sorted((attn_scores or {}).items()):
        for m in ATTN_MATRICES:
            out[f"blocks.{L}.attn.{m}"] = s
    per_kv = arch.n_heads // arch.n_kv_heads
    for (L, h), s in sorted(head_scores.items()):
        out[f"blocks.{L}.attn.q.h{h}"] = s
        out[f"blocks.{L}.attn.o.h{h}"] = s
        for m in ("k", "v"):
            key = f"blocks.{L}.attn.{m}.h{h // per_kv}"
            out[key] = out.get(key, 0.0) + abs(s)
    for L, s in sorted(mlp_scores.items()):
        for m in arch.matrix_types:
            if m in MLP_MATRICES:
                out[f"blocks.{L}.mlp.{m}"] = s
    return out
