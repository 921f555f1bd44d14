"""Where a training step may run its matmuls in bf16: on CUDA (``autocast``, on by default), and
on a CPU only when it has native bf16 (avx512_bf16 or AMX) and ``cpu_bf16`` asks for it. A CPU
without it emulates bf16 about 300x slower than fp32, so asking there is an error, not a fallback.
The weights, the optimizer state and every evaluated number stay fp32."""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch
from torch import nn

from mechunlearn.errors import MechunlearnError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_bf16_native() -> bool:
    """The CPU multiplies bf16 natively (avx512_bf16 or AMX)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(bool(p()) for p in probes if p is not None)
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def check_cpu_bf16(device: torch.device | str) -> None:
    if torch.device(device).type == "cpu" and not cpu_bf16_native():
        raise MechunlearnError("cpu_bf16 is on, but this CPU has no native bf16 (neither avx512_bf16 nor AMX): it "
                               "would emulate bf16 about 300x slower than fp32; turn cpu_bf16 off")


def step_autocast(device: torch.device, cuda_bf16: bool = True, cpu_bf16: bool = False,
                  frozen: FrozenBf16 | None = None):
    """bf16 autocast for a training step's forward pass on ``device``, or nothing; with ``frozen``,
    its bf16 copies of the frozen weights stand in for them while it casts."""
    if not autocasts(device, cuda_bf16, cpu_bf16):
        return contextlib.nullcontext()
    if device.type == "cpu":
        check_cpu_bf16(device)
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if frozen is not None:
        stack.enter_context(frozen.swapped_in())
    return stack


class FrozenBf16:
    """bf16 copies of a model's frozen linear weights, made once per training. Autocast casts a
    weight that needs no gradient to bf16 again at every use (Gemma's 671 MB vocabulary matrix
    twice a step); a copy cast once holds the same bf16 values, so the steps compute exactly what
    they computed before, and the CPU's bf16 matmuls run at their own speed. Outside a step the
    model keeps its fp32 weights (evaluations and checks stay fp32)."""

    def __init__(self, model: nn.Module):
        self.pairs = [(m, m.weight, nn.Parameter(m.weight.detach().to(torch.bfloat16), requires_grad=False))
                      for m in model.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]

    @contextlib.contextmanager
    def swapped_in(self):
        for module, _, copy in self.pairs:
            module.weight = copy
        try:
            yield
        finally:
            for module, weight, _ in self.pairs:
                module.weight = weight


def frozen_bf16(model: nn.Module, device: torch.device, cpu_bf16: bool) -> FrozenBf16 | None:
    """The bf16 copies for a CPU's bf16 steps (on CUDA autocast keeps its own casts: memory is
    dearer there), or None."""
    return FrozenBf16(model) if cpu_bf16 and torch.device(device).type == "cpu" else None


def autocasts(device: torch.device, cuda_bf16: bool = True, cpu_bf16: bool = False) -> bool:
    """Whether :func:`step_autocast` casts on ``device``."""
    return (device.type == "cuda" and cuda_bf16) or (device.type == "cpu" and cpu_bf16)
