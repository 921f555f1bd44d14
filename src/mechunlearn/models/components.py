"""One addressing layer for every localizer, trainer, mask and saver.

Names follow TransformerLens:

* trainable matrices: ``blocks.{L}.attn.{q,k,v,o}``, ``blocks.{L}.mlp.{in,gate,out}``;
  one head of an attention matrix ``blocks.{L}.attn.q.h{H}`` (k/v heads are KV heads under GQA);
  one neuron of an MLP matrix ``blocks.{L}.mlp.in.n{N}``;
* activations: ``hook_embed``, ``blocks.{L}.hook_resid_pre``, ``blocks.{L}.hook_resid_post``,
  ``blocks.{L}.hook_attn_out``, ``blocks.{L}.hook_mlp_out``, ``blocks.{L}.attn.hook_z``
  (input of the o projection, per head), ``blocks.{L}.mlp.hook_post`` (input of the out
  projection, per neuron), and each matrix name, whose activation is the matrix's features on
  its unit side (q/k/v/in/gate: its output; o/out: its input).

A matrix's *units* are heads or neurons. Each unit is a contiguous run of rows or columns of an
HF parameter (``offset + u*stride`` .. ``+ size``), which covers separate and fused (GPT-2,
GPT-NeoX) projections alike.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from mechunlearn.errors import MechunlearnError, UnsupportedArchitectureError
from mechunlearn.models.names import ATTN_MATRICES, LLAMA_LIKE, MLP_MATRICES, SUPPORTED_MODEL_TYPES  # noqa: F401

# where the sublayer's output is normed before it joins the residual stream, the block's output is that norm's
POST_NORMED = ("gemma2", "gemma3", "gemma3_text", "olmo2")


@dataclass(frozen=True)
class UnitLayout:
    """Where unit ``u`` lies along one axis: ``offset + u*stride`` for ``size`` entries."""

    n_units: int
    size: int
    stride: int
    offset: int = 0

    def span(self, unit: int) -> tuple[int, int]:
        start = self.offset + unit * self.stride
        return start, start + self.size

    def feature_index(self, units: list[int] | None = None) -> torch.Tensor:
        chosen = range(self.n_units) if units is None else units
        return torch.cat([torch.arange(*self.span(u)) for u in chosen])


@dataclass(frozen=True)
class ParamSlice:
    """Rows (dim 0) or columns (dim 1) ``start:stop`` of one HF parameter (dim 0 for biases)."""

    param: str
    dim: int
    start: int
    stop: int

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(self.dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Component:
    name: str
    layer: int
    block: str  # "attn" | "mlp"
    matrix: str  # q k v o in gate out
    unit: int | None  # head or neuron index, None for the whole matrix
    slices: tuple[ParamSlice, ...]
    n_params: int


@dataclass(frozen=True)
class MatrixSpec:
    module: str  # path inside the block, e.g. "self_attn.q_proj"
    unit_side: str  # "output" or "input": which feature axis the units live on
    layout: UnitLayout


@dataclass(frozen=True)
class HookPoint:
    name: str
    module: str  # full module path in the HF model
    side: str  # "output" or "input"
    units: UnitLayout | None = None  # heads / neurons along the last feature axis


_NAME = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.(q|k|v|o|in|gate|out)(?:\.(h|n)(\d+))?$")


class Architecture:
    """Maps canonical names to the real modules and parameters of one HF model."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"model type {model_type!r} is not supported; supported: "
                + ", ".join(SUPPORTED_MODEL_TYPES)
            )
        self.model_type = model_type
        self.family = "llama" if model_type in LLAMA_LIKE else model_type
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.n_layers: int = c.num_hidden_layers
        self.d_model: int = c.hidden_size
        self.n_heads: int = c.num_attention_heads
        self.n_kv_heads: int = getattr(c, "num_key_value_heads", None) or self.n_heads
        self.d_head: int = getattr(c, "head_dim", None) or self.d_model // self.n_heads
        self.d_mlp: int = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * self.d_model
        self._shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self._module_types = {name: type(m).__name__ for name, m in model.named_modules()}  # no reference to the model
        self.layers_path, self.embed_path, self.final_norm_path = self._find_paths()
        self.specs = self._matrix_specs()
        self.has_gate = "gate" in self.specs

    # --- family tables -------------------------------------------------------------------
    def _find_paths(self) -> tuple[str, str, str]:
        """The decoder layers, the token embedding and the norm before the unembedding."""
        candidates = {
            "llama": ("model.layers", "model.embed_tokens", "model.norm"),
            "gpt2": ("transformer.h", "transformer.wte", "transformer.ln_f"),
            "gpt_neox": ("gpt_neox.layers", "gpt_neox.embed_in", "gpt_neox.final_layer_norm"),
        }[self.family]
        for prefix in ("", "model.", "base_model.model."):
            layers, embed, norm = (prefix + p for p in candidates)
            if layers in self._module_types:
                return layers, embed, norm
        raise UnsupportedArchitectureError(f"cannot find the decoder layers of this {self.model_type} model")

    def _matrix_specs(self) -> dict[str, MatrixSpec]:
        H, KV, dh, ff, d = self.n_heads, self.n_kv_heads, self.d_head, self.d_mlp, self.d_model
        heads = UnitLayout(H, dh, dh)
        kv_heads = UnitLayout(KV, dh, dh)
        neurons = UnitLayout(ff, 1, 1)
        if self.model_type == "phi3":  # llama-like with fused qkv_proj [q | k | v] and gate_up_proj [gate | up]
            return {
                "q": MatrixSpec("self_attn.qkv_proj", "output", UnitLayout(H, dh, dh, 0)),
                "k": MatrixSpec("self_attn.qkv_proj", "output", UnitLayout(KV, dh, dh, H * dh)),
                "v": MatrixSpec("self_attn.qkv_proj", "output", UnitLayout(KV, dh, dh, (H + KV) * dh)),
                "o": MatrixSpec("self_attn.o_proj", "input", heads),
                "in": MatrixSpec("mlp.gate_up_proj", "output", UnitLayout(ff, 1, 1, ff)),
                "gate": MatrixSpec("mlp.gate_up_proj", "output", neurons),
                "out": MatrixSpec("mlp.down_proj", "input", neurons),
            }
        if self.family == "llama":
            return {
                "q": MatrixSpec("self_attn.q_proj", "output", heads),
                "k": MatrixSpec("self_attn.k_proj", "output", kv_heads),
                "v": MatrixSpec("self_attn.v_proj", "output", kv_heads),
                "o": MatrixSpec("self_attn.o_proj", "input", heads),
                "in": MatrixSpec("mlp.up_proj", "output", neurons),
                "gate": MatrixSpec("mlp.gate_proj", "output", neurons),
                "out": MatrixSpec("mlp.down_proj", "input", neurons),
            }
        if self.family == "gpt2":
            return {
                "q": MatrixSpec("attn.c_attn", "output", UnitLayout(H, dh, dh, 0)),
                "k": MatrixSpec("attn.c_attn", "output", UnitLayout(H, dh, dh, d)),
                "v": MatrixSpec("attn.c_attn", "output", UnitLayout(H, dh, dh, 2 * d)),
                "o": MatrixSpec("attn.c_proj", "input", heads),
                "in": MatrixSpec("mlp.c_fc", "output", neurons),
                "out": MatrixSpec("mlp.c_proj", "input", neurons),
            }
        # gpt_neox: query_key_value rows are laid out [head, (q|k|v), d_head]
        return {
            "q": MatrixSpec("attention.query_key_value", "output", UnitLayout(H, dh, 3 * dh, 0)),
            "k": MatrixSpec("attention.query_key_value", "output", UnitLayout(H, dh, 3 * dh, dh)),
            "v": MatrixSpec("attention.query_key_value", "output", UnitLayout(H, dh, 3 * dh, 2 * dh)),
            "o": MatrixSpec("attention.dense", "input", heads),
            "in": MatrixSpec("mlp.dense_h_to_4h", "output", neurons),
            "out": MatrixSpec("mlp.dense_4h_to_h", "input", neurons),
        }

    def _block_out_modules(self) -> tuple[str, str]:
        if self.model_type in POST_NORMED:
            return "post_attention_layernorm", "post_feedforward_layernorm"
        return {"llama": ("self_attn", "mlp"), "gpt2": ("attn", "mlp"), "gpt_neox": ("attention", "mlp")}[self.family]

    # --- components ----------------------------------------------------------------------
    @property
    def matrix_types(self) -> tuple[str, ...]:
        return tuple(m for m in (*ATTN_MATRICES, *MLP_MATRICES) if m in self.specs)

    def module_path(self, layer: int, inner: str) -> str:
        return f"{self.layers_path}.{layer}.{inner}"

    def _weight_dim(self, spec: MatrixSpec, module_path: str) -> int:
        # nn.Linear weight is [out, in]; GPT-2's Conv1D weight is [in, out].
        transposed = self._module_types[module_path] == "Conv1D"
        on_output = spec.unit_side == "output"
        return int(on_output == transposed)

    def _slices(self, layer: int, matrix: str, units: list[int]) -> tuple[ParamSlice, ...]:
        spec = self.specs[matrix]
        path = self.module_path(layer, spec.module)
        dim = self._weight_dim(spec, path)
        spans = _merge([spec.layout.span(u) for u in units])
        slices = [ParamSlice(f"{path}.weight", dim, a, b) for a, b in spans]
        bias = f"{path}.bias"
        if bias in self._shapes:
            if spec.unit_side == "output":
                slices += [ParamSlice(bias, 0, a, b) for a, b in spans]
            elif len(units) == spec.layout.n_units:  # a bias on the input side belongs to the whole matrix
                slices.append(ParamSlice(bias, 0, 0, self._shapes[bias][0]))
        return tuple(slices)

    def _count(self, slices: tuple[ParamSlice, ...]) -> int:
        total = 0
        for s in slices:
            shape = list(self._shapes[s.param])
            shape[s.dim] = s.stop - s.start
            total += int(torch.tensor(shape).prod())
        return total

    def component(self, name: str) -> Component:
        m = _NAME.match(name)
        if not m:
            raise MechunlearnError(f"not a component name: {name!r} (e.g. 'blocks.3.mlp.in', 'blocks.2.attn.q.h1')")
        layer, block, matrix, unit_kind, unit = m.groups()
        layer = int(layer)
        if not 0 <= layer < self.n_layers:
            raise MechunlearnError(f"{name}: layer {layer} out of range 0..{self.n_layers - 1}")
        if matrix not in self.specs or (block == "attn") != (matrix in ATTN_MATRICES):
            raise MechunlearnError(f"{name}: this {self.model_type} model has no such matrix")
        layout = self.specs[matrix].layout
        if unit is None:
            units = list(range(layout.n_units))
        else:
            expected = "h" if block == "attn" else "n"
            if unit_kind != expected or not 0 <= int(unit) < layout.n_units:
                raise MechunlearnError(f"{name}: no such unit (use .{expected}0 .. .{expected}{layout.n_units - 1})")
            units = [int(unit)]
        slices = self._slices(layer, matrix, units)
        return Component(name, layer, block, matrix, None if unit is None else int(unit), slices, self._count(slices))

    def matrices(self, layers: list[int] | None = None, blocks: tuple[str, ...] = ("attn", "mlp")) -> list[Component]:
        layers = range(self.n_layers) if layers is None else layers
        return [
            self.component(f"blocks.{L}.{'attn' if m in ATTN_MATRICES else 'mlp'}.{m}")
            for L in layers
            for m in self.matrix_types
            if ("attn" if m in ATTN_MATRICES else "mlp") in blocks
        ]

    def units(self, matrix_name: str) -> list[Component]:
        whole = self.component(matrix_name)
        prefix = "h" if whole.block == "attn" else "n"
        n = self.specs[whole.matrix].layout.n_units
        return [self.component(f"{matrix_name}.{prefix}{u}") for u in range(n)]

    @cached_property
    def n_trainable_matrix_params(self) -> int:
        return sum(c.n_params for c in self.matrices())

    # --- hook points ---------------------------------------------------------------------
    def hook_point(self, name: str) -> HookPoint:
        if name == "hook_embed":
            return HookPoint(name, self.embed_path, "output")
        m = _NAME.match(name)
        if m and m.group(4) is None:
            self.component(name)  # validates
            spec = self.specs[m.group(3)]
            return HookPoint(name, self.module_path(int(m.group(1)), spec.module), spec.unit_side, spec.layout)
        m = re.match(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z|mlp\.hook_post)$", name)
        if not m or not 0 <= int(m.group(1)) < self.n_layers:
            raise MechunlearnError(f"unknown hook point {name!r}")
        layer, what = int(m.group(1)), m.group(2)
        attn_out, mlp_out = self._block_out_modules()
        if what == "hook_resid_pre":
            return HookPoint(name, f"{self.layers_path}.{layer}", "input")
        if what == "hook_resid_post":
            return HookPoint(name, f"{self.layers_path}.{layer}", "output")
        if what == "hook_attn_out":
            return HookPoint(name, self.module_path(layer, attn_out), "output")
        if what == "hook_mlp_out":
            return HookPoint(name, self.module_path(layer, mlp_out), "output")
        if what == "attn.hook_z":
            spec = self.specs["o"]
            return HookPoint(name, self.module_path(layer, spec.module), "input", spec.layout)
        spec = self.specs["out"]
        return HookPoint(name, self.module_path(layer, spec.module), "input", spec.layout)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


_TABLES: weakref.WeakKeyDictionary[nn.Module, Architecture] = weakref.WeakKeyDictionary()


def architecture(model: nn.Module) -> Architecture:
    """The model's architecture table, built once per model object (a copy gets its own)."""
    table = _TABLES.get(model)
    if table is None:
        table = _TABLES[model] = Architecture(model)
    return table


_LAYER_SHORTHAND = re.compile(r"^blocks\.(\d+)(?:\.\.(\d+))?(?:\.(attn|mlp))?$")


def expand_components(arch: Architecture, spec: str | Sequence[str]) -> list[str]:
    """Component names from a comma-separated string or a list. Besides full names
    (``blocks.3.mlp.in``, ``blocks.2.attn.q.h1``) accepts layer shorthands: ``blocks.4.mlp``
    (its in/gate/out), ``blocks.4.attn`` (q, k, v, o), ``blocks.4`` (both) and ranges
    ``blocks.2..7.mlp``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        m = _LAYER_SHORTHAND.match(item)
        if m:
            first, last = int(m.group(1)), int(m.group(2) or m.group(1))
            if not 0 <= first <= last < arch.n_layers:
                raise MechunlearnError(f"{item}: layers must lie in 0..{arch.n_layers - 1} (and first <= last)")
            blocks = (m.group(3),) if m.group(3) else ("attn", "mlp")
            names += [c.name for c in arch.matrices(list(range(first, last + 1)), blocks)]
        else:
            names.append(arch.component(item).name)
    unique = list(dict.fromkeys(names))
    if not unique:
        raise MechunlearnError("no components selected")
    return unique


def merge_slices(components: Sequence[Component]) -> list[ParamSlice]:
    """The union of the components' parameter slices: one run per contiguous span."""
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    dims: dict[str, int] = {}
    for comp in components:
        for s in comp.slices:
            if dims.setdefault(s.param, s.dim) != s.dim:
                raise MechunlearnError(f"{s.param} is selected along two axes; select whole matrices instead")
            spans.setdefault((s.param, s.dim), []).append((s.start, s.stop))
    merged: list[ParamSlice] = []
    for (param, dim), runs in spans.items():
        runs.sort()
        current = list(runs[0])
        for a, b in runs[1:]:
            if a <= current[1]:
                current[1] = max(current[1], b)
            else:
                merged.append(ParamSlice(param, dim, *current))
                current = [a, b]
        merged.append(ParamSlice(param, dim, *current))
    return merged
