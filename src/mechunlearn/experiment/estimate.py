"""The memory estimate of ``mechunlearn run`` from its config and its plan (no model loaded), and
the guard that checks it before loading and before every cell."""

from __future__ import annotations

from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.experiment.plan import RunPlan, plan
from mechunlearn.localize.catalog import spec_of
from mechunlearn.models.memory import (
    Estimate,
    ModelShape,
    Stage,
    base_parts,
    edit_step_stage,
    forward_stage,
    load_stage,
    model_shape,
    prompt_tokens,
)
from mechunlearn.models.memory_guard import check_all, check_stage


def localization_stage(shape: ModelShape, method: str, n_facts: int, probe_facts: int, tokens: int, params: dict,
                       count: int) -> Stage:
    """One method's localization (``count`` of them in the run): the pass counts its declaration in
    ``localize/catalog.py`` gives; the run also holds the pristine copy of the weights."""
    cost = spec_of(method).cost(shape, n_facts, probe_facts, params)
    L, H = shape.n_layers, shape.n_heads
    parts = {**base_parts(shape, 2),
             "activations": shape.activations(cost.rows, tokens, False) + shape.activations(cost.grad_rows, tokens, True),
             "logits": shape.logits(cost.grad_rows, True) if cost.grad_rows else 0,
             "cached activations": 2 * n_facts * tokens * L * (H * shape.head_dim + 2 * shape.d_model) * 4}
    passes = {k: v * count for k, v in cost.passes.items()}
    return Stage(f"localize {method}", parts, passes, f"localization.params.{method}.max_rows / batch_size")


def run_estimate(config, work: RunPlan, shape: ModelShape, prompts: dict[str, list[str]]) -> Estimate:
    """``mechunlearn run`` from its config and ``experiment.runner.plan``: ``prompts`` maps each
    setting to its fact prompts (before the known-fact filter, so the counts are upper bounds)."""
    stages = [load_stage(shape)]
    stages[0].parts["pristine copy"] = shape.weights  # the runner resets every cell from a clone
    stages[0].hint = "dtype: bfloat16 (on a GPU) or a smaller model"
    cells = work.cells
    all_prompts = [p for ps in prompts.values() for p in ps]
    tokens = prompt_tokens(all_prompts)
    stages.append(forward_stage(shape, "known-fact filter", len(all_prompts), 32, tokens, copies=2))
    loc = config.localization
    arms = config.arms()
    for localized in config.localized():
        count = sum(1 for m, *_ in work.localizations if m == localized)
        stages.append(localization_stage(shape, config.method_of(localized), loc.n_facts, loc.probe_facts, tokens,
                                         config.localization_params(localized), count))
    trained = _trained_per_method(config, shape)
    edit = evaluation = None
    attacked: dict[str, Stage | None] = dict.fromkeys(ATTACKS)  # each attack's stage, merged over the settings
    for name, s in work.settings.items():
        n_cells = sum(1 for c in cells if c[0] == name) // (len(arms) + 1)
        for method, cfg in s.training.items():
            step = edit_step_stage(shape, cfg.resolved(True), trained[method], 0, tokens, copies=2,
                                   n_forget=s.forget)
            step.passes = {k: v * n_cells * s.blocks for k, v in step.passes.items()}
            edit = _merge_stage(edit, step)
        ev = s.eval_config
        n_eval = s.forget * s.blocks + max(0, len(prompts[name]) // 2)
        ev_stage = forward_stage(shape, "evaluation batch", n_eval * len(s.formats), ev.batch_size, tokens,
                                 copies=2, hint="evaluation.config.batch_size")
        ev_stage.passes = {k: v * n_cells * (len(arms) + 1) for k, v in ev_stage.passes.items()}
        evaluation = _merge_stage(evaluation, ev_stage)
        for name in (n for n in ATTACKS if n in s.attacks):
            cost = ATTACKS[name].cost(shape, ev.attack_config(name), s.forget * s.blocks, tokens, copies=2)
            if cost is not None:
                attacked_models = len(arms) + ATTACKS[name].attacks_unedited
                cost.passes = {k: v * n_cells * attacked_models for k, v in cost.passes.items()}
                attacked[name] = _merge_stage(attacked[name], cost)
    stages += [st for st in (edit, evaluation, *attacked.values()) if st is not None]
    notes = [f"{len(cells)} cells ({len(config.seeds)} seed(s) x {len(work.settings)} setting(s) x "
             f"{len(arms) + 1} arms incl. the unedited model), {len(work.localizations)} localizations",
             "trained parameters per arm: " + ", ".join(f"{m} {n:,}" for m, n in trained.items()),
             "edit-step passes are for the step cap; fact counts are before the known-fact filter (upper bounds)"]
    return Estimate(config.model, stages, notes)


def _trained_per_method(config, shape: ModelShape) -> dict[str, int]:
    """Exempt baselines by their size; the matched arms at budget.params, else at most every MLP
    matrix (the matched size is known only after localizing)."""
    budget = config.localization.budget
    out = {}
    for arm in config.arms():
        method = config.method_of(arm)
        own_size = spec_of(method).own_size
        out[arm] = own_size(shape) if method in budget.exempt and own_size else (budget.params or shape.mlp_params())
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
