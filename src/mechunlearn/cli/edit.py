"""``mechunlearn edit`` (train only the localized components) and ``mechunlearn apply-diff``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from mechunlearn.cli.app import app, console
from mechunlearn.cli.common import (
    DATA,
    DATASET,
    DEVICE,
    DTYPE,
    MODEL,
    SEED,
    THRESHOLD,
    as_selection,
    check_input_file,
    check_model_args,
    check_number,
    check_out_folder,
    check_threshold,
    localization_misfit,
    open_model,
    pick_device,
    read_localization,
    relation_facts,
    resolved_path,
)
from mechunlearn.edit.config import DEFAULT_STEPS, EditConfig
from mechunlearn.edit.files import DIFF_FILE, LOG_FILE, diff_file
from mechunlearn.errors import MechunlearnError
from mechunlearn.io import atomic_dir
from mechunlearn.models.sources import DEVICE_MAPS

if TYPE_CHECKING:
    from mechunlearn.edit.pipeline import EditOutcome
    from mechunlearn.localize import Localization, Selection

# torch, transformers and the pipeline are imported inside the commands, after the cheap checks:
# --help and a one-line error about a bad input answer at once

DEFAULTS = EditConfig()
# the command trains to a strength by default: --steps is then the cap (the one a run and the demo
# use), with the cosine schedule laid over it (so a raised cap also keeps the lr high for longer)
CLI_TARGET, CLI_STEPS = 0.9, DEFAULT_STEPS


@dataclass(frozen=True)
class _Trained:
    """What --components, or --localization cut by --budget / --match, asks to train."""

    components: str | None
    loc: Localization | Selection | None = None
    match: Localization | Selection | None = None
    budget: int | None = None
    force: bool = False
    rule: str = "within"  # how --budget / --match cut the localization (localize/budget.py RULES)

    def names(self, lm) -> tuple[list[str], str]:
        """The component names in ``lm`` (anything with ``arch`` and ``source``) and where they came from."""
        from mechunlearn.edit.selection import expand_components

        if self.components is not None:
            return expand_components(lm.arch, self.components), "--components"
        for item, option in self._files():
            localization_misfit(item, option, lm.arch, lm.source, force=self.force)
        selection = as_selection(self.loc, lm.arch, budget=self.budget, match=self.match, rule=self.rule)
        return expand_components(lm.arch, selection.components), f"{self.loc.path} ({selection.n_params} parameters)"

    def misfits(self, lm, base_hash: str) -> list[str]:
        """The files made on other weights than the loaded model's (allowed by --force)."""
        dtype = str(lm.model.dtype).removeprefix("torch.")
        return list(filter(None, (localization_misfit(item, option, lm.arch, lm.source, dtype, base_hash, self.force)
                                  for item, option in self._files())))

    def _files(self) -> list[tuple[Localization | Selection, str]]:
        return [(item, option) for item, option in ((self.loc, "--localization"), (self.match, "--match"))
                if item is not None]


def _read_selection_args(localization: Path | None, components: str | None, budget: int | None,
                         match: Path | None, force: bool, rule: str | None = None) -> _Trained:
    """The parsed --localization and --match files (cheap: no model needed)."""
    from mechunlearn.experiment.config import BudgetSpec
    from mechunlearn.localize.budget import RULES

    if (localization is None) == (components is None):
        raise MechunlearnError("give either --localization LOC.json or --components NAMES")
    if rule is not None and rule not in RULES:
        raise MechunlearnError(f"unknown --rule {rule!r}: {', '.join(RULES)}")
    if components is not None:
        if budget is not None or match is not None or rule is not None:
            raise MechunlearnError("--budget, --match and --rule apply to --localization, not to --components")
        if not any(c.strip() for c in components.split(",")):
            raise MechunlearnError("--components is empty: name at least one component, e.g. blocks.3.mlp")
        return _Trained(components, force=force)
    check_number("--budget", budget, above=0)
    loc = read_localization(localization, "--localization")
    return _Trained(None, loc, read_localization(match, "--match") if match is not None else None, budget, force,
                    rule or BudgetSpec.rule)


def _check_split_args(facts, forget: int, mode: str, category: str | None, new_target: str | None,
                      relation: str | None = None) -> None:
    """What the split needs from the fact file, checked before the model scores it."""
    if mode not in ("random", "first", "category"):
        raise MechunlearnError(f"unknown --mode {mode!r}: random, first or category")
    if relation is not None:
        edited = relation_facts(facts, relation)
        if mode != "category" and forget > len(edited):
            raise MechunlearnError(f"--forget {forget}: the relation {relation!r} has only {len(edited)} facts; "
                                   "forget fewer")
        facts_of_answer = edited
    else:
        facts_of_answer = facts
    if mode != "category":
        if category is not None or new_target is not None:
            raise MechunlearnError("--category and --new-target apply to --mode category only")
        check_number("--forget", forget, minimum=1)
        if forget >= len(facts):
            raise MechunlearnError(f"--forget {forget}: the data has only {len(facts)} facts and some must be left "
                                   "to maintain; forget fewer")
        return
    if not category or not category.strip():
        raise MechunlearnError("--mode category needs --category ANSWER (the true answer to edit, e.g. basketball)")
    answers = facts_of_answer.count_by_answer()
    if category.strip() not in answers:
        raise MechunlearnError(f"--category {category!r}: no fact has this answer; the answers are "
                               f"{', '.join(list(answers)[:10])}")
    if new_target is not None and new_target.strip() == category.strip():
        raise MechunlearnError(f"--new-target {new_target!r} equals --category: the edit would change nothing; "
                               "give another answer")


def _open(model: str, dtype: str, device: str | None, device_map: str | None):
    """The model, and the Accelerator when launched as several processes (``accelerate launch`` /
    ``torchrun``); --device-map spreads one process's model over the GPUs instead."""
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=(device or "").startswith("cpu"))
    if device_map and accelerator is not None:
        raise MechunlearnError("--device-map splits one model over GPUs in one process; do not combine it with a "
                               "multi-process launch")
    if device_map:
        from mechunlearn.models.loading import load_model

        return load_model(model, dtype=dtype, device_map=device_map), None
    return open_model(model, dtype, str(accelerator.device) if accelerator is not None else device), accelerator


def _read_ladder(text: str | None, config: EditConfig) -> tuple[float, ...]:
    if text is None:
        return ()
    try:
        ladder = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise MechunlearnError(f"--lr-ladder {text!r}: write learning rates separated by commas, e.g. "
                               "3e-4,1e-3,3e-3") from None
    if not all(math.isfinite(v) and v > 0 for v in ladder):
        raise MechunlearnError(f"--lr-ladder {text!r}: every learning rate must be a positive finite number")
    if config.target is None:
        raise MechunlearnError("--lr-ladder is climbed when --target is missed; with --target 0 (a fixed number of "
                               "steps) there is no target: drop one of them")
    return ladder


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def _print_outcome(outcome: EditOutcome, config: EditConfig, n_components: int, out: Path) -> None:
    result, before, after, split = outcome.result, outcome.before, outcome.after, outcome.split
    table = Table(title=f"{config.objective}: {len(split.forget)} facts, {n_components} components, "
                        f"{result.n_trained_params:,} trained parameters, {result.seconds:.0f} s")
    for col in ("training format", "before", "after"):
        table.add_column(col, justify="left" if col == "training format" else "right")
    for key in before:
        table.add_row(key, f"{before[key]:.3f}", f"{after[key]:.3f}")
    console.print(table)
    if outcome.ladder is not None:
        first = outcome.ladder["first_attempt"]
        console.print(f"lr ladder: {first['strength']:.3f} after {first['steps']} steps at lr {first['lr']:g} missed "
                      f"the target; trained again at lr {result.config.lr:g}, chosen on the validation carve",
                      soft_wrap=True)
    if result.target is not None:
        console.print(f"target {result.target['target']}: {result.target['strength']:.3f} after "
                      f"{result.target['steps']} of at most {config.steps} steps ({result.target['measure']})",
                      soft_wrap=True)
    console.print(f"known facts: {len(outcome.known.known)} of {outcome.known.total}; split {split.sizes()}")
    console.print(f"wrote {out}/model, {out}/diff.safetensors, {out}/train_log.json")


@app.command("edit")
def edit(
    out: Path = typer.Option(..., "--out", help="Output folder: model/ (HF checkpoint), diff.safetensors, train_log.json."),
    model: str = MODEL,
    localization: Path = typer.Option(None, "--localization", help="A localization or selection JSON (mechunlearn localize)."),
    budget: int = typer.Option(None, "--budget", help="Cut the localization to this many trained parameters."),
    match: Path = typer.Option(None, "--match", help="Cut the localization to the size of this localization/selection."),
    rule: str = typer.Option(None, "--rule", help="How --budget / --match cut the localization: within (default, "
                             "as a run and localize): within 10% of the budget; closest; under: never above it."),
    components: str = typer.Option(None, "--components", help="Components instead of a localization, e.g. "
                                   "'blocks.2..7.mlp' or 'blocks.3.mlp.in,blocks.4.attn,blocks.2.attn.q.h1'."),
    dataset: str = DATASET, data: str = DATA, threshold: float = THRESHOLD, seed: int = SEED,
    forget: int = typer.Option(16, "--forget", help="Number of known facts to edit / unlearn."),
    mode: str = typer.Option("random", "--mode", help="random | first | category"),
    category: str = typer.Option(None, "--category", help="With --mode category: the true answer to edit (e.g. basketball)."),
    new_target: str = typer.Option(None, "--new-target", help="With --mode category: the new answer (e.g. golf)."),
    relation: str = typer.Option(None, "--relation", help="Edit only facts of this relation (the table's "
                                 "'relation' column); the other relations' facts are maintained, and reported "
                                 "as unrelated by 'mechunlearn evaluate'."),
    objective: str = typer.Option(DEFAULTS.objective, "--objective", help="edit | log1m | grad_ascent | npo"),
    steps: int = typer.Option(CLI_STEPS, "--steps", help="The step cap (with --target) or the exact number of "
                              "steps (--target 0)."),
    target: float = typer.Option(CLI_TARGET, "--target", help="Stop when the forget strength on the training "
                                 "prompts reaches this (edit: mean P(edit target); unlearning: 1 - mean P(true)); "
                                 "0: train exactly --steps steps."),
    check_every: int = typer.Option(DEFAULTS.check_every, "--check-every", help="Steps between strength checks."),
    target_band: float = typer.Option(None, "--target-band", help="A check above target + this walks the "
                                      "weights back along the last stretch into [target, target + band]."),
    require_target: bool = typer.Option(False, "--require-target", help="Exit 2 and write nothing when the "
                                        "target is not reached within --steps."),
    lr: float = typer.Option(DEFAULTS.lr, "--lr"),
    lr_ladder: str = typer.Option(None, "--lr-ladder", help="Learning rates, e.g. 3e-4,1e-3,3e-3: when --target is "
                                  "missed at --lr, train again from the original weights at the one the validation "
                                  "carve of the maintain facts chooses (as a run's arms do)."),
    c_forget: float = typer.Option(None, "--c-forget", help="Weight of the edit/unlearning term (default: 0.2 for "
                                   "log1m, 1 for the others)."),
    c_maintain: float = typer.Option(DEFAULTS.c_maintain, "--c-maintain"),
    c_general: float = typer.Option(DEFAULTS.c_general, "--c-general", help="Weight of the general-text LM term (0: off)."),
    forget_batch: int = typer.Option(DEFAULTS.forget_batch_size, "--forget-batch"),
    maintain_batch: int = typer.Option(DEFAULTS.maintain_batch_size, "--maintain-batch"),
    general_batch: int = typer.Option(DEFAULTS.general_batch_size, "--general-batch", help="General-text windows per step."),
    general_length: int = typer.Option(DEFAULTS.general_length, "--general-length", help="Tokens per general-text window."),
    general_text: str = typer.Option(None, "--general-text", help="Text file (paragraphs split by blank lines) or "
                                     "hf:DATASET[:SPLIT[:COLUMN]]; default: the built-in text."),
    warmup: int = typer.Option(DEFAULTS.warmup, "--warmup"),
    grad_accum: int = typer.Option(DEFAULTS.grad_accum, "--grad-accum"),
    grad_clip: float = typer.Option(DEFAULTS.grad_clip, "--grad-clip"),
    forget_over: str = typer.Option(DEFAULTS.forget_over, "--forget-over", help="auto | vocab | answers: the forget term's softmax (auto: vocab for edit, the answer set for unlearning a closed set)"),
    weight_mask: bool = typer.Option(False, "--weight-mask", help="Learn an elementwise mask over the selected matrices."),
    mask_l1: float = typer.Option(DEFAULTS.mask_l1, "--mask-l1"),
    mask_threshold: float = typer.Option(None, "--mask-threshold", help="Binarize the learned mask at this value."),
    dtype: str = DTYPE, device: str = DEVICE,
    device_map: str = typer.Option(None, "--device-map", help="'auto' (or balanced, balanced_low_0, sequential) "
                                   "spreads a model too big for one GPU over all visible GPUs (one process; see "
                                   "docs/scaling.md)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the memory estimate and the forward/backward "
                                 "passes of each stage, and exit without loading the weights."),
    force: bool = typer.Option(False, "--force", help="Train a localization made on another model (other "
                               "architecture or weights) anyway."),
):
    """Edit or unlearn facts by fine-tuning only the localized components."""
    if target == 0 and target_band is not None:
        raise MechunlearnError("--target-band walks an overshoot back to --target; with --target 0 (a fixed number "
                               "of steps) there is none: drop one of them")
    config = EditConfig(
        objective=objective, steps=steps, lr=lr, c_forget=c_forget, c_maintain=c_maintain, c_general=c_general,
        forget_batch_size=forget_batch, maintain_batch_size=maintain_batch, general_batch_size=general_batch,
        general_length=general_length, general_text=general_text, warmup=warmup, grad_clip=grad_clip,
        grad_accum=grad_accum, seed=seed, forget_over=forget_over, weight_mask=weight_mask, mask_l1=mask_l1,
        mask_threshold=mask_threshold, target=target if target != 0 else None, check_every=check_every,
        target_band=target_band,
    ).validate()
    for line in config.inert():
        _warn(line)
    ladder = _read_ladder(lr_ladder, config)
    check_out_folder(out, "--out", (LOG_FILE, DIFF_FILE))
    check_threshold(threshold)
    if general_text and not general_text.startswith("hf:"):
        check_input_file(general_text, "--general-text")
    trained = _read_selection_args(localization, components, budget, match, force, rule)
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise typer.BadParameter(f"--device-map {device_map!r}: use one of {', '.join(DEVICE_MAPS)}")
    check_model_args({"--model": model}, dtype, None if device_map else device)
    from mechunlearn.facts import load_facts

    all_facts = load_facts(dataset, data, seed=seed)
    _check_split_args(all_facts, forget, mode, category, new_target, relation)
    from mechunlearn.edit.pipeline import EditOutput, FactChoice, edit_facts
    from mechunlearn.edit.saving import weights_hash
    from mechunlearn.models.memory_guard import check_all, edit_command_estimate, print_estimate

    estimate = edit_command_estimate(model, dtype, None if device_map else device, config, all_facts, forget,
                                     lambda arch: trained.names(SimpleNamespace(arch=arch, source=model))[0])
    if dry_run:
        print_estimate(estimate)
        return
    if not device_map:
        check_all(estimate, pick_device(device))
    lm, accelerator = _open(model, dtype, device, device_map)
    names, source = trained.names(lm)
    base_hash = weights_hash(lm.model)
    for misfit in trained.misfits(lm, base_hash):
        console.print(f"[yellow]warning (--force):[/yellow] {escape(misfit)}", soft_wrap=True)
    choice = FactChoice(dataset=dataset, data=data, seed=seed, threshold=threshold, forget=forget, mode=mode,
                        category=category, new_target=new_target, relation=relation)
    output = EditOutput(out, resolved_path(model), resolved_path(data), source)
    outcome = edit_facts(lm, names, all_facts, choice, config, output, base_hash=base_hash, accelerator=accelerator,
                         memory_stage=None if device_map else estimate.stage("edit step"),
                         require_target=require_target, warn=_warn, ladder=ladder)
    if outcome is not None:
        _print_outcome(outcome, config, len(names), out)


@app.command("apply-diff")
def apply_diff_cmd(
    diff: Path = typer.Argument(..., help="An edit's diff.safetensors (or its folder)."),
    out: Path = typer.Option(..., "--out", help="Folder for the rebuilt HF checkpoint."),
    model: str = typer.Option(None, "--model", help="The base model (default: the one recorded in the diff)."),
    dtype: str = typer.Option(None, "--dtype", help="Default: the dtype the diff was made in."),
    device: str = DEVICE,
):
    """Rebuild an edited model from its base model and the small diff (the base's hash is checked)."""
    diff_file(diff)  # a missing diff is refused before torch is imported
    from mechunlearn.edit.saving import apply_diff, check_output_dir, read_diff, save_model
    from mechunlearn.models.loading import load_model

    record = read_diff(diff)
    check_out_folder(out, "--out", ("config.json",))
    check_model_args({"--model" if model else "the diff's base model": model or record.base_model},
                     dtype or record.dtype, device)
    base = load_model(model or record.base_model, dtype=dtype or record.dtype, device=pick_device(device))
    check_output_dir(base, out, ("config.json",))
    edited = apply_diff(base, diff)
    with atomic_dir(out) as tmp:
        save_model(edited, tmp)
    console.print(f"applied {len(record.slices)} slices ({', '.join(record.components[:4])}"
                  f"{' ...' if len(record.components) > 4 else ''}) to {base.spec}; wrote {out}")
