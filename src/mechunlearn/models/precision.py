"""Where a training step may run its matmuls in bf16: on CUDA (``autocast``, on by default), and
on a CPU only when it has native bf16 (avx512_bf16 or AMX) and ``cpu_bf16`` asks for it. A CPU
without it emulates bf16 about 300x slower than fp32, so asking there is an error, not a fallback.
The weights, the optimizer state and every evaluated number stay fp32."""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

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


def step_autocast(device: torch.device, cuda_bf16: bool = True, cpu_bf16: bool = False):
    """bf16 autocast for a training step's forward pass on ``device``, or nothing."""
    if not autocasts(device, cuda_bf16, cpu_bf16):
        return contextlib.nullcontext()
    if device.type == "cpu":
        check_cpu_bf16(device)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def autocasts(device: torch.device, cuda_bf16: bool = True, cpu_bf16: bool = False) -> bool:
    """Whether :func:`step_autocast` casts on ``device``."""
    return (device.type == "cuda" and cuda_bf16) or (device.type == "cpu" and cpu_bf16)
