"""Batched activation patching on the hook layer.

A ``Variant`` is one patched run: ``Patch(name, source, positions, units)`` writes ``source``
(a ``[B, T, F]`` activation of another run) into hook point ``name`` at ``positions`` ([B, T]
bool, None = all) and ``units`` (heads/neurons, None = all features).

``PatchRunner`` runs a base input once (e.g. the noised run of causal tracing), caching the
residual stream entering every layer. Its ``run`` then evaluates many variants cheaply:

* variants are stacked along the batch dimension (V x B rows per forward pass);
* a variant whose earliest patch is in layer L equals the base run before L, so it starts at
  layer L from the cached residual: during that call the layers before L are swapped for a
  pass-through module (nothing else about the model changes; it is restored on exit);
* with ``prefix=P`` the caller guarantees that the first P positions are the same in the base
  run and in every variant (e.g. the tokens before the subject, when only the subject is
  corrupted): their keys and values are computed once and only positions P.. are run.

``run_loop`` is the plain reference (one full forward pass per variant, ``patch_activations``);
the two agree to float precision (tests, ``benchmarks/bench_localize.py``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.components import Architecture, HookPoint
from mechunlearn.models.encoding import Encoded, final_hidden
from mechunlearn.models.hooks import (
    HookFn,
    cache_activations,
    hooks,
    patch_activations,
    skip_layers,
)
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.prefix import PrefixKV, forward_suffix

_LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Patch:
    name: str
    source: torch.Tensor  # [B, T, F]
    positions: torch.Tensor | None = None  # [B, T] bool
    units: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Variant:
    label: str
    patches: tuple[Patch, ...]

    @property
    def start_layer(self) -> int:
        return min(layer_of(p.name) for p in self.patches)


def layer_of(name: str) -> int:
    m = _LAYER.match(name)
    if not m:
        raise MechunlearnError(f"patches must be inside a block (blocks.L....), got {name!r}")
    return int(m.group(1))


def final_norm(lm: LoadedModel) -> nn.Module:
    """The norm between the last residual stream and the unembedding."""
    return lm.model.get_submodule(lm.arch.final_norm_path)


def head_output_fn(lm: LoadedModel, layer: int):
    """``z [..., n_heads*d_head] -> what the attention block adds to the residual stream``:
    the o projection, followed by the post-attention norm where the family has one (Gemma 2/3)."""
    arch = lm.arch
    o_path = arch.hook_point(f"blocks.{layer}.attn.o").module
    out_path = arch.hook_point(f"blocks.{layer}.hook_attn_out").module
    o = lm.model.get_submodule(o_path)
    if o_path.startswith(out_path + "."):
        return o
    post = lm.model.get_submodule(out_path)
    return lambda z: post(o(z))


def _mask(point: HookPoint, patch: Patch, act: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(act.shape[:2], dtype=torch.bool, device=act.device) if patch.positions is None \
        else patch.positions.to(act.device)
    mask = mask[..., None]
    if patch.units is not None:
        if point.units is None:
            raise MechunlearnError(f"{point.name} has no heads or neurons to select")
        feat = torch.zeros(act.shape[-1], dtype=torch.bool, device=act.device)
        feat[point.units.feature_index(list(patch.units)).to(act.device)] = True
        mask = mask & feat
    return mask


def _drop_prefix(patch: Patch, P: int) -> Patch:
    if not P:
        return patch
    positions = None if patch.positions is None else patch.positions[:, P:]
    return Patch(patch.name, patch.source[:, P:], positions, patch.units)


def _repeat(batch: Encoded, n: int) -> Encoded:
    return Encoded(batch.input_ids.repeat(n, 1), batch.attention_mask.repeat(n, 1), batch.last_index.repeat(n))


class PatchRunner:
    """Base run cached once; variants evaluated batched (``run``) or one by one (``run_loop``).
    Both return the final normed hidden state at each prompt's last token: ``[V, B, d]``."""

    def __init__(self, lm: LoadedModel, batch: Encoded, base_hooks: Sequence[tuple[str, HookFn]] = (),
                 max_rows: int = 128, cache_names: Sequence[str] = (), prefix: int = 0, prefix_cache=None,
                 resume: bool = True):
        bad = [n for n, _ in base_hooks if n != "hook_embed"]
        if bad:
            raise MechunlearnError(f"base hooks may only change the embeddings (hook_embed), got {bad}")
        self.lm, self.model, self.arch = lm, lm.model, lm.arch
        self.batch = batch.to(lm.device)
        self.base_hooks = list(base_hooks)
        self.max_rows = max_rows
        self.resume = resume  # False: every variant runs from layer 0 (benchmark baseline)
        names = [f"blocks.{L}.hook_resid_pre" for L in range(self.arch.n_layers)]
        with torch.no_grad(), hooks(self.model, self.base_hooks), \
                cache_activations(self.model, list(dict.fromkeys([*names, *cache_names]))) as cache:
            self.base_hidden = final_hidden(self.model, self.batch)
        self.resid_pre = [cache[n] for n in names]
        self.cache = {n: cache[n] for n in cache_names}  # other activations of the base run
        if not 0 <= prefix <= int(self.batch.last_index.min()):
            raise MechunlearnError(f"shared prefix {prefix} must end before every prompt's last token")
        self.prefix = prefix
        self.prefix_cache: PrefixKV | None = prefix_cache  # reusable by another runner on the same prompts and prefix
        if prefix and prefix_cache is None:
            with torch.no_grad():
                self.prefix_cache = PrefixKV.run(self.model, self.batch.input_ids[:, :prefix],
                                                 self.batch.attention_mask[:, :prefix])

    def run(self, variants: Sequence[Variant], progress: bool = False) -> torch.Tensor:
        B = len(self.batch)
        out = torch.empty(len(variants), B, self.arch.d_model, device=self.lm.device)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, v in enumerate(variants):
            groups[v.start_layer if self.resume else 0].append(i)
        per_call = max(1, self.max_rows // B)
        calls = [(start, groups[start][k:k + per_call]) for start in sorted(groups)
                 for k in range(0, len(groups[start]), per_call)]
        for start, chunk in tqdm(calls, desc="patched runs", disable=not progress):
            hidden = self._run_group(start, [variants[i] for i in chunk])
            out[chunk] = hidden.view(len(chunk), B, -1).to(out.dtype)
        return out

    def _run_group(self, start: int, variants: list[Variant]) -> torch.Tensor:
        B, V = len(self.batch), len(variants)
        start_name = f"blocks.{start}.hook_resid_pre"
        entries: dict[str, list[tuple[int, Patch]]] = defaultdict(list)
        entries[start_name] = []
        P = self.prefix
        for v, variant in enumerate(variants):
            for p in variant.patches:
                entries[p.name].append((v, _drop_prefix(p, P)))
        base = self.resid_pre[start][:, P:]

        def make(name: str, items: list[tuple[int, Patch]]) -> HookFn:
            def fn(act, point):
                out = base.repeat(V, 1, 1).to(act.dtype) if name == start_name else act.clone()
                for v, p in items:
                    rows = slice(v * B, (v + 1) * B)
                    out[rows] = torch.where(_mask(point, p, out[rows]), p.source.to(out.device, out.dtype), out[rows])
                return out

            return fn

        fns = [(name, make(name, items)) for name, items in entries.items()]
        with torch.no_grad(), skip_layers(self.model, start), hooks(self.model, fns):
            if not P:
                return final_hidden(self.model, _repeat(self.batch, V))
            rows = torch.arange(B, device=self.lm.device).repeat(V)  # variant-major, like Tensor.repeat
            h = forward_suffix(self.model, self.prefix_cache, rows, self.batch.input_ids[:, P:].repeat(V, 1),
                               self.batch.attention_mask.repeat(V, 1))
            return h[torch.arange(V * B, device=h.device), self.batch.last_index.repeat(V) - P]

    def run_loop(self, variants: Sequence[Variant]) -> torch.Tensor:
        outs = []
        for variant in variants:
            with ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                stack.enter_context(hooks(self.model, self.base_hooks))
                for p in variant.patches:
                    units = {p.name: list(p.units)} if p.units is not None else None
                    stack.enter_context(patch_activations(self.model, {p.name: p.source}, p.positions, units))
                outs.append(final_hidden(self.model, self.batch))
        return torch.stack(outs)


def shared_prefix(batch: Encoded) -> int:
    """Positions before every prompt's first subject token (unchanged by a subject corruption)."""
    if batch.subject_mask is None:
        return 0
    return int(batch.subject_mask.float().argmax(1).min())


def component_variants(arch: Architecture, source: dict[str, torch.Tensor], layers: Sequence[int],
                       heads: bool = True, mlps: bool = True, positions: torch.Tensor | None = None) -> list[Variant]:
    """One variant per attention head (its ``hook_z`` slice) and per MLP (``hook_mlp_out``) of
    ``layers``, writing ``source`` (e.g. the clean run's cache) at ``positions``. Labels are
    ``blocks.L.attn.hH`` and ``blocks.L.mlp``."""
    out = []
    for L in layers:
        if heads:
            z = f"blocks.{L}.attn.hook_z"
            out += [Variant(f"blocks.{L}.attn.h{h}", (Patch(z, source[z], positions, (h,)),)) for h in range(arch.n_heads)]
        if mlps:
            m = f"blocks.{L}.hook_mlp_out"
            out.append(Variant(f"blocks.{L}.mlp", (Patch(m, source[m], positions),)))
    return out


def component_hook_names(layers: Sequence[int], heads: bool = True, mlps: bool = True) -> list[str]:
    names = []
    for L in layers:
        names += [f"blocks.{L}.attn.hook_z"] if heads else []
        names += [f"blocks.{L}.hook_mlp_out"] if mlps else []
    return names
