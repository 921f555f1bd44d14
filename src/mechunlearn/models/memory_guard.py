"""The memory guard: what a stage still has to allocate against the memory available (refused
with one line naming the flag that lowers it), and the estimates of whole commands (``edit``,
``run``) built from ``memory.py``'s stages."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.models.memory import (
    GUARD_ENV,
    Estimate,
    ModelShape,
    Stage,
    base_parts,
    edit_step_stage,
    forward_stage,
    load_stage,
    mib,
    model_shape,
    prompt_tokens,
    relearn_stage,
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


# --- mechunlearn run ----------------------------------------------------------------------------

def localization_stage(shape: ModelShape, method: str, n_facts: int, probe_facts: int, tokens: int, params: dict,
                       count: int) -> Stage:
    """One method's localization (``count`` of them in the run): rough pass counts of each method's
    batched restorations / gradients; the run also holds the pristine copy of the weights."""
    L, H = shape.n_layers, shape.n_heads
    passes: dict[str, int] = {}
    grad_rows, rows = 0, 0
    if method.startswith("causal_tracing"):
        max_rows, n_noise = params.get("max_rows", 160), params.get("n_noise", 1)
        variants = L * ((H + 2) if not method.endswith("mlps") else 1)
        passes["forward"] = 1 + n_noise * (1 + math.ceil(variants * n_facts / max_rows))
        rows = min(max_rows, variants * n_facts)
    elif method.startswith("attribution_patching"):
        batch = params.get("batch_size", 32)
        passes = {"forward": 2 * math.ceil(n_facts / batch), "backward": math.ceil(n_facts / batch)}
        grad_rows = min(batch, n_facts)
    elif method == "fact_lookup":
        max_rows = params.get("max_rows", 128)
        passes["forward"] = 2 + math.ceil((L * H + L) * n_facts / max_rows) + math.ceil(probe_facts / 16)
        rows = min(max_rows, (L * H + L) * n_facts)
    parts = {**base_parts(shape, 2),
             "activations": shape.activations(rows, tokens, False) + shape.activations(grad_rows, tokens, True),
             "logits": shape.logits(grad_rows, True) if grad_rows else 0,
             "cached activations": 2 * n_facts * tokens * L * (H * shape.head_dim + 2 * shape.d_model) * 4}
    passes = {k: v * count for k, v in passes.items()}
    return Stage(f"localize {method}", parts, passes, f"localization.params.{method}.max_rows / batch_size")


def run_estimate(config, work: dict, shape: ModelShape, prompts: dict[str, list[str]]) -> Estimate:
    """``mechunlearn run`` from its config and ``experiment.runner.plan``: ``prompts`` maps each
    setting to its fact prompts (before the known-fact filter, so the counts are upper bounds)."""
    stages = [load_stage(shape)]
    stages[0].parts["pristine copy"] = shape.weights  # the runner resets every cell from a clone
    stages[0].hint = "dtype: bfloat16 (on a GPU) or a smaller model"
    cells = work["cells"]
    all_prompts = [p for ps in prompts.values() for p in ps]
    tokens = prompt_tokens(all_prompts)
    stages.append(forward_stage(shape, "known-fact filter", len(all_prompts), 32, tokens, copies=2))
    loc = config.localization
    arms = config.arms()
    for localized in config.localized():
        count = sum(1 for m, *_ in work["localizations"] if m == localized)
        stages.append(localization_stage(shape, config.method_of(localized), loc.n_facts, loc.probe_facts, tokens,
                                         config.localization_params(localized), count))
    trained = _trained_per_method(config, shape)
    edit = evaluation = relearning = None
    for name, s in work["settings"].items():
        n_cells = sum(1 for c in cells if c[0] == name) // (len(arms) + 1)
        for method, cfg in s["training"].items():
            step = edit_step_stage(shape, cfg.resolved(True), trained[method], 0, tokens, copies=2,
                                   n_forget=s["forget"])
            step.passes = {k: v * n_cells * s["blocks"] for k, v in step.passes.items()}
            edit = _merge_stage(edit, step)
        ev = s["eval_config"]
        n_eval = s["forget"] * s["blocks"] + max(0, len(prompts[name]) // 2)
        ev_stage = forward_stage(shape, "evaluation batch", n_eval * len(s["formats"]), ev.batch_size, tokens,
                                 copies=2, hint="evaluation.config.batch_size")
        ev_stage.passes = {k: v * n_cells * (len(arms) + 1) for k, v in ev_stage.passes.items()}
        evaluation = _merge_stage(evaluation, ev_stage)
        if "relearn" in s["attacks"]:
            rel = relearn_stage(shape, ev.relearn, s["forget"] * s["blocks"], tokens, copies=2)
            rel.passes = {k: v * n_cells * (len(arms) + 1) for k, v in rel.passes.items()}
            relearning = _merge_stage(relearning, rel)
    stages += [st for st in (edit, evaluation, relearning) if st is not None]
    notes = [f"{len(cells)} cells ({len(config.seeds)} seed(s) x {len(work['settings'])} setting(s) x "
             f"{len(arms) + 1} arms incl. the unedited model), {len(work['localizations'])} localizations",
             "trained parameters per arm: " + ", ".join(f"{m} {n:,}" for m, n in trained.items()),
             "edit-step passes are for the step cap; fact counts are before the known-fact filter (upper bounds)"]
    return Estimate(config.model, stages, notes)


def _trained_per_method(config, shape: ModelShape) -> dict[str, int]:
    """Exempt baselines by their size; the matched arms at budget.params, else at most every MLP
    matrix (the matched size is known only after localizing)."""
    budget = config.localization.budget
    sizes = {"all_mlps": shape.mlp_params(), "everything": shape.block_params()}
    out = {}
    for arm in config.arms():
        method = config.method_of(arm)
        if method in budget.exempt and method in sizes:
            out[arm] = sizes[method]
        else:
            out[arm] = budget.params or shape.mlp_params()
    return out


def _merge_stage(old: Stage | None, new: Stage) -> Stage:
    """The larger of two estimates of one stage, with the passes of both."""
    if old is None:
        return new
    big = new if new.total > old.total else old
    passes = {k: old.passes.get(k, 0) + new.passes.get(k, 0) for k in {*old.passes, *new.passes}}
    return Stage(big.name, big.parts, passes, big.hint)


class RunGuard:
    """The checks of ``mechunlearn run``: every stage before loading, the edit step before each cell."""

    def __init__(self, shape: ModelShape, estimate: Estimate, tokens: int, device):
        self.shape, self.estimate, self.tokens, self.device = shape, estimate, tokens, device

    def before_load(self) -> None:
        check_all(self.estimate, self.device)

    def before_cell(self, cfg, n_trained: int, device) -> None:
        step = edit_step_stage(self.shape, cfg.resolved(True), n_trained, 0, self.tokens, copies=2)
        hint = "training.default.grad_accum or the batch sizes (--set training.default.grad_accum=4)"
        check_stage(Stage(step.name, step.parts, hint=hint), device, loaded=True)


def run_guard(config) -> RunGuard:
    """The estimate of a run from its config (the fact files are read, no model is loaded)."""
    from mechunlearn.experiment import facts as run_facts
    from mechunlearn.experiment.runner import plan
    from mechunlearn.models.loading import resolve_device

    device = resolve_device(config.device)
    shape = model_shape(config.model, config.dtype, device)
    prompts = {}
    for setting in config.settings:
        spec = run_facts.resolve_paths(config, setting)
        prompts[setting.name] = [] if spec.dataset == "hub" else [f.prompt for f in run_facts.load_spec(spec)]
    estimate = run_estimate(config, plan(config), shape, prompts)
    tokens = prompt_tokens([p for ps in prompts.values() for p in ps])
    return RunGuard(shape, estimate, tokens, device)
