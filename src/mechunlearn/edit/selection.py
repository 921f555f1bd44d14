"""From component names to the tensors an optimizer trains.

Only the selected rows/columns of a parameter are trained. A parameter wholly selected is
trained in place; a partly selected one (heads, neurons) gets a separate tensor per selected
slice: the model computes the gradient of the whole parameter, the slice's share is copied
into the separate tensor, and after each optimizer step the slice is written back. So the
optimizer holds state only for what is trained and every other weight stays bitwise equal.

The weight-mask variant trains an elementwise mask ``M`` in [0, 1] per slice instead, with
``W = W0 * M`` written into the model before every forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.components import Component, ParamSlice, expand_components, merge_slices

__all__ = ["TrainableWeights", "expand_components", "merge_slices"]


@dataclass
class _Entry:
    slice: ParamSlice
    param: nn.Parameter
    tensor: torch.Tensor  # what the optimizer updates: the parameter itself, a slice copy, or a mask
    original: torch.Tensor  # the slice before training (restore on failure, on the CPU; W0 of a mask)
    whole: bool

    def view(self) -> torch.Tensor:
        return self.slice.view(self.param.data)


class TrainableWeights:
    def __init__(self, model: nn.Module, components: Sequence[Component], mask: bool = False):
        self.model = model
        self.mask = mask
        self.components = list(components)
        params = dict(model.named_parameters())
        self.entries: list[_Entry] = []
        for s in merge_slices(components):
            if s.param not in params:
                raise MechunlearnError(f"parameter {s.param} not found in the model")
            param = params[s.param]
            whole = s.start == 0 and s.stop == param.shape[s.dim]
            current = s.view(param.data).detach()
            if mask:  # W0 is used every step: keep it beside the weights
                original = current.clone()
                tensor = torch.ones(original.shape, dtype=torch.float32, device=original.device)
            else:  # only needed to undo a failed run: keep it off the accelerator
                original = current.to("cpu", copy=True)
                tensor = param if whole else current.clone()
            self.entries.append(_Entry(s, param, tensor, original, whole))
        self._flags: dict[str, bool] = {}

    @property
    def slices(self) -> list[ParamSlice]:
        return [e.slice for e in self.entries]

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [e.tensor for e in self.entries]

    @property
    def n_params(self) -> int:
        return sum(e.original.numel() for e in self.entries)

    def activate(self) -> None:
        """Freeze everything except the parameters that hold a selected slice."""
        self._flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.model.requires_grad_(False)
        for e in self.entries:
            e.param.requires_grad_(True)
            if e.tensor is not e.param:
                e.tensor.requires_grad_(True)
        self.write()

    def deactivate(self) -> None:
        for e in self.entries:
            e.param.grad = None
            if e.tensor is not e.param:
                e.tensor.grad = None
                e.tensor.requires_grad_(False)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._flags.get(name, p.requires_grad))

    @torch.no_grad()
    def write(self) -> None:
        """Put the trained values into the model's parameters."""
        for e in self.entries:
            if self.mask:
                e.view().copy_((e.original.float() * e.tensor).to(e.param.dtype))
            elif not e.whole:
                e.view().copy_(e.tensor)

    @torch.no_grad()
    def collect_grads(self) -> None:
        """Move each slice's share of its parameter's gradient onto the optimizer's tensor."""
        for e in self.entries:
            grad = e.param.grad
            if grad is None:
                grad = torch.zeros_like(e.param)
            g = e.slice.view(grad)
            if self.mask:
                e.tensor.grad = g.float() * e.original.float()
            elif e.whole:
                e.param.grad = grad
            else:
                e.tensor.grad = g.clone()
        for e in self.entries:
            if e.tensor is not e.param:
                e.param.grad = None

    def mask_penalty(self) -> torch.Tensor:
        """sum(1 - M) over every mask entry (M <= 1, so this is the L1 distance to keeping all)."""
        return sum((1 - e.tensor).sum() for e in self.entries)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.mask:
            for e in self.entries:
                e.tensor.clamp_(0.0, 1.0)
        self.write()

    @torch.no_grad()
    def binarize_masks(self, threshold: float) -> None:
        for e in self.entries:
            e.tensor.copy_((e.tensor >= threshold).float())
        self.write()

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """A copy of what the optimizer updates (the values, or the masks)."""
        return [e.tensor.detach().clone() for e in self.entries]

    @torch.no_grad()
    def set_between(self, start: list[torch.Tensor], end: list[torch.Tensor], fraction: float) -> None:
        """Put the weights at ``start + fraction * (end - start)`` (two :meth:`snapshot` s)."""
        for e, a, b in zip(self.entries, start, end, strict=True):
            e.tensor.copy_(torch.lerp(a, b, fraction))
        self.after_step()

    @torch.no_grad()
    def restore_original(self) -> None:
        for e in self.entries:
            e.view().copy_(e.original.to(e.param.device))
            if not self.mask and not e.whole:
                e.tensor.copy_(e.view())

    @torch.no_grad()
    def blown_up(self, factor: float) -> str | None:
        """The first trained parameter that holds a non-finite value or one ``factor`` times larger
        than the largest magnitude it started with (at least 1), in words; None when all are sane."""
        for e in self.entries:
            now = float(e.view().detach().abs().max())
            if not math.isfinite(now):
                return f"{e.slice.param} holds {now}"
            if not self.mask and now > factor * max(1.0, float(e.original.abs().max())):
                return f"{e.slice.param} reached |w| = {now:.3g} (from {float(e.original.abs().max()):.3g})"
        return None

    def mask_stats(self) -> dict[str, float]:
        if not self.mask:
            return {}
        flat = torch.cat([e.tensor.detach().flatten().cpu() for e in self.entries])
        return {"mask_mean": float(flat.mean()), "mask_below_half": float((flat < 0.5).float().mean())}
