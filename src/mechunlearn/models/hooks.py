"""The one hook layer: every localizer, attack and metric reads or edits activations here.

``hooks(model, [(name, fn), ...])`` is the generic primitive (TransformerLens' ``run_with_hooks``
as a context manager): ``fn(activation, hook_point)`` returns a replacement or ``None``. The
other context managers are thin wrappers over it. Hooks are always removed on exit, also when
the body raises. Activations have shape ``[batch, seq, features]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from mechunlearn.models.components import HookPoint, architecture

HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new, *x[1:]) if isinstance(x, tuple) else new


def _register(module: nn.Module, point: HookPoint, fn: HookFn):
    if point.side == "output":

        def on_output(_mod, _args, output):
            new = fn(_first(output), point)
            return None if new is None else _replace_first(output, new)

        return module.register_forward_hook(on_output)

    def on_input(_mod, args, kwargs):
        if args:
            new = fn(args[0], point)
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"], point)
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return module.register_forward_pre_hook(on_input, with_kwargs=True)


@contextmanager
def hooks(model: nn.Module, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    arch = architecture(model)
    handles = []
    try:
        for name, fn in fwd_hooks:
            point = arch.hook_point(name)
            handles.append(_register(model.get_submodule(point.module), point, fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _select_mask(
    act: torch.Tensor, point: HookPoint, positions: torch.Tensor | None, units: Sequence[int] | None
) -> torch.Tensor:
    """Boolean mask over ``act`` selecting the positions ([B, T] bool) and units to touch."""
    mask = torch.ones(act.shape, dtype=torch.bool, device=act.device)
    if positions is not None:
        mask &= positions.to(act.device)[..., None]
    if units is not None:
        if point.units is None:
            raise ValueError(f"{point.name} has no heads or neurons to select")
        feat = torch.zeros(act.shape[-1], dtype=torch.bool, device=act.device)
        feat[point.units.feature_index(list(units)).to(act.device)] = True
        mask &= feat
    return mask


def unit_view(act: torch.Tensor, point: HookPoint) -> torch.Tensor:
    """``[..., features]`` -> ``[..., n_units, unit_size]`` for a hook point with units."""
    idx = point.units.feature_index().to(act.device)
    return act.index_select(-1, idx).unflatten(-1, (point.units.n_units, point.units.size))


@contextmanager
def cache_activations(model: nn.Module, names: Sequence[str], detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activations of ``names`` during the forward passes run inside the context."""
    cache: dict[str, torch.Tensor] = {}

    def store(act, point):
        cache[point.name] = act.detach() if detach else act

    with hooks(model, [(n, store) for n in names]):
        yield cache


@contextmanager
def patch_activations(
    model: nn.Module,
    source: dict[str, torch.Tensor],
    positions: torch.Tensor | None = None,
    units: dict[str, Sequence[int]] | None = None,
) -> Iterator[None]:
    """Replace activations by ``source[name]`` (e.g. from a clean run), optionally only at
    ``positions`` ([B, T] bool) and only for some heads/neurons (``units[name]``)."""
    units = units or {}

    def make(name):
        def patch(act, point):
            src = source[name].to(act.dtype)
            if positions is None and name not in units:
                return src.expand_as(act).clone()
            return torch.where(_select_mask(act, point, positions, units.get(name)), src, act)

        return patch

    with hooks(model, [(n, make(n)) for n in source]):
        yield


@contextmanager
def record_gradients(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the activations of ``names`` in the graph so that after ``loss.backward()`` each
    recorded tensor has ``.grad`` (d loss / d activation). Works with a frozen model."""
    acts: dict[str, torch.Tensor] = {}

    def into_graph(act, _point):
        if not act.requires_grad:
            return act.detach().requires_grad_(True)
        return None

    def keep(act, point):
        act.retain_grad()
        acts[point.name] = act

    with torch.enable_grad(), hooks(model, [("hook_embed", into_graph), *[(n, keep) for n in names]]):
        yield acts


class _PassThrough(nn.Module):
    def forward(self, hidden_states=None, *args, **kwargs):
        return hidden_states if hidden_states is not None else kwargs["hidden_states"]


@contextmanager
def skip_layers(model: nn.Module, start: int) -> Iterator[None]:
    """Run the decoder layers before ``start`` as identities: for patched runs that replace the
    residual stream entering layer ``start`` anyway, so the earlier layers' work is wasted."""
    if start <= 0:
        yield
        return
    layers = model.get_submodule(architecture(model).layers_path)
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _PassThrough()
        yield
    finally:
        for i, module in enumerate(saved):
            layers[i] = module
