"""The memory guard: what a stage still has to allocate against the memory available (refused
with one line naming the flag that lowers it), and the estimate of ``mechunlearn edit`` built from
``memory.py``'s stages (the estimate of ``run`` is ``experiment/estimate.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.memory import (
    GUARD_ENV,
    Estimate,
    ModelShape,
    Stage,
    edit_step_stage,
    forward_stage,
    load_stage,
    mib,
    model_shape,
    prompt_tokens,
)

# --- the guard ----------------------------------------------------------------------------------

def available_memory(device: str | torch.device | None = None) -> tuple[int, str]:
    """Bytes free for this process: CUDA's free memory on a GPU, else MemAvailable."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return free, f"free on {dev}"
    try:
        import psutil

        return psutil.virtual_memory().available, "available RAM"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return 1 << 62, "available RAM (unknown)"


def check_stage(stage: Stage, device=None, loaded: bool = False, what: str = "") -> None:
    """Refuse ``stage`` with one line when its new allocations exceed the available memory."""
    if os.environ.get(GUARD_ENV, "1") == "0":
        return
    need = stage.new_bytes(loaded)
    free, kind = available_memory(device)
    if need > free:
        hint = f"; lower it with {stage.hint}" if stage.hint else ""
        raise MechunlearnError(f"not enough memory for {what or stage.name}: it needs about {mib(need)} more "
                               f"(peak {mib(stage.total)}), {mib(free)} {kind}{hint}, or set {GUARD_ENV}=0 "
                               "to try anyway")


def check_all(estimate: Estimate, device=None) -> None:
    """Before loading: every stage must fit, so nothing is loaded for a run that cannot finish."""
    for stage in sorted(estimate.stages, key=lambda s: -s.total):
        check_stage(stage, device, loaded=False, what=f"the {stage.name} stage")


# --- whole commands -----------------------------------------------------------------------------

def edit_estimate(spec: str, shape: ModelShape, config, trained: int, partial: int, prompts: list[str],
                  n_forget: int, closed_answers: int | None = None) -> Estimate:
    """``mechunlearn edit``: load, the known-fact filter, one training step (and the step cap's
    passes), the before/after check."""
    tokens = prompt_tokens(prompts)
    n = len(prompts)
    stages = [
        load_stage(shape),
        forward_stage(shape, "known-fact filter", n, 32, tokens),
        edit_step_stage(shape, config, trained, partial, tokens, closed_answers=closed_answers, n_forget=n_forget),
        forward_stage(shape, "before/after check", 2 * n, 16, tokens),
    ]
    notes = [f"{trained:,} trained parameters; prompts up to ~{tokens} tokens; the edit step's passes are for "
             f"the cap of {config.steps} steps"]
    return Estimate(spec, stages, notes)


def edit_command_estimate(spec: str, dtype: str, device: str | None, config, facts, n_forget: int,
                          names_for) -> Estimate:
    """The estimate of ``mechunlearn edit`` before anything is loaded: ``names_for(arch)`` gives
    the trained components on the meta-device model's architecture."""
    from mechunlearn.models.loading import resolve_device

    shape = model_shape(spec, dtype, resolve_device(device))
    trained, partial = shape.component_params(names_for(shape.arch))
    closed = len(facts.answers) if facts.closed else None
    return edit_estimate(spec, shape, config.resolved(facts.closed), trained, partial,
                         [f.prompt for f in facts], n_forget, closed)


def print_estimate(estimate: Estimate) -> None:
    """On stdout, plain (a dry run's result, to read or to pipe)."""
    print("\n".join(estimate.lines()))
