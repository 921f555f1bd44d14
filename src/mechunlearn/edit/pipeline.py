"""One edit, from the facts read to the folder written: the facts the model knows, their split,
the training of the chosen components with its checks, and the files an edit writes. ``mechunlearn
edit`` runs all of it (``edit_facts``); the runner trains its arms with ``train_split``.

Nothing here prints: ``edit_facts`` returns what the command reports, and hands a warning met on
the way to ``warn``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.files import DIFF_FILE, LOG_FILE
from mechunlearn.edit.saving import check_output_dir, save_edit
from mechunlearn.edit.selection import TrainableWeights, expand_components
from mechunlearn.edit.sweep import LADDER_RULE, first_attempt, sweep
from mechunlearn.edit.trainer import TrainResult, train
from mechunlearn.errors import MechunlearnError, TrainingDivergedError
from mechunlearn.facts import FactSet, KnownReport, Split, answer_probs, filter_known, split_facts
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.memory_guard import check_stage

if TYPE_CHECKING:
    from mechunlearn.models.memory import Stage


@dataclass(frozen=True)
class FactChoice:
    """Which facts an edit trains on: the fact file, the known-fact threshold and the split."""

    dataset: str
    data: str | None
    seed: int
    threshold: float | None
    forget: int
    mode: str  # random, first or category (facts/splits.py)
    category: str | None
    new_target: str | None
    relation: str | None


@dataclass(frozen=True)
class EditOutput:
    """Where an edit is written, and the sources its train log names."""

    folder: Path
    base_spec: str | None  # the base model
    data: str | None  # the fact file
    selection: str  # where the trained components came from


@dataclass
class EditOutcome:
    known: KnownReport
    split: Split
    result: TrainResult
    before: dict[str, float]  # quick_eval before and after the training
    after: dict[str, float]
    ladder: dict | None = None  # the first attempt and the sweep, when a missed target climbed the lr ladder


def known_split(lm: LoadedModel, facts: FactSet, choice: FactChoice) -> tuple[Split, KnownReport]:
    """The facts ``lm`` knows, split; some known facts must be left to maintain."""
    report = filter_known(lm.model, lm.tokenizer, facts, threshold=choice.threshold, progress=True)
    known = report.known
    if choice.mode != "category" and choice.forget >= len(known):
        raise MechunlearnError(f"--forget {choice.forget}: the model knows only {len(known)} of the {report.total} "
                               f"facts at P(true) > {report.threshold} and some must be left to maintain; forget "
                               "fewer or lower --threshold")
    split = split_facts(known, forget=choice.forget, mode=choice.mode, category=choice.category,
                        new_target=choice.new_target, seed=choice.seed, relation=choice.relation)
    return split, report


def quick_eval(lm: LoadedModel, split: Split) -> dict[str, float]:
    """Mean P(true) of the edited and the held-out maintain facts (and P(edit target)) in the
    training format."""
    p_true, p_new = answer_probs(lm.model, lm.tokenizer, split.forget_eval)
    keep, _ = answer_probs(lm.model, lm.tokenizer, split.maintain_test)
    out = {"forget P(true)": float(p_true.mean()), "maintain-test P(true)": float(keep.mean())}
    if not p_new.isnan().all():
        out["forget P(edit target)"] = float(p_new.nanmean())
    return out


def missed_target(result: TrainResult) -> str | None:
    """What a training that stopped at its step cap short of its target reached; None otherwise."""
    record = result.target
    if record is None or record["reached"]:
        return None
    return (f"target not reached: {record['measure']} is {record['strength']:.3f} after {record['steps']} "
            f"steps (the cap), target {record['target']}; raise --steps (the cap) or --lr")


def train_split(lm: LoadedModel, components: Sequence[str], split: Split, config: EditConfig, *, base_hash: str,
                progress: bool = True, accelerator=None, require_target: bool = False,
                warn: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``components`` of ``lm`` on ``split`` from the weights hashed ``base_hash``. A missed
    target goes to ``warn``, or with ``require_target`` is an error before anything is written."""
    result = train(lm, components, split, config, progress=progress, accelerator=accelerator, base_hash=base_hash)
    _report_missed(result, require_target, warn)
    return result


def _report_missed(result: TrainResult, require_target: bool, warn: Callable[[str], None] | None) -> None:
    missed = missed_target(result)
    if missed is not None and require_target:
        raise MechunlearnError(missed + "; nothing was written")
    if missed is not None and warn is not None:
        warn(missed)


def train_with_ladder(lm: LoadedModel, components: Sequence[str], split: Split, config: EditConfig,
                      ladder: Sequence[float], *, base_hash: str) -> tuple[TrainResult, dict | None]:
    """Train; when the target is missed at ``config.lr``, train again from the original weights
    at the learning rate of ``ladder`` that the sweep chooses on the split's validation carve (as a
    run's arms do). Returns the result and what the ladder did (None when it was not climbed)."""
    original = TrainableWeights(lm.model, [lm.arch.component(n) for n in expand_components(lm.arch, components)])

    def fresh() -> LoadedModel:
        original.restore_original()
        return lm

    first = train(lm, components, split, config, base_hash=base_hash)
    if first.target is None or first.target["reached"]:
        return first, None
    chosen, record = sweep(config, {"lr": list(ladder)}, split, fresh,
                           lambda m, carve, c: train(m, components, carve, c, progress=False, base_hash=base_hash))
    fresh()
    result = train(lm, components, split, chosen, base_hash=base_hash)
    return result, {"rule": LADDER_RULE.format(ladder=", ".join(f"{lr:g}" for lr in ladder)),
                    "first_attempt": first_attempt([first]), "sweep": record}


def edit_facts(lm: LoadedModel, components: Sequence[str], facts: FactSet, choice: FactChoice, config: EditConfig,
               output: EditOutput, *, base_hash: str, memory_stage: Stage | None = None, accelerator=None,
               require_target: bool = False, warn: Callable[[str], None] | None = None,
               ladder: Sequence[float] = ()) -> EditOutcome | None:
    """Edit the known facts of ``facts`` chosen by ``choice`` and write the edit to ``output``
    (``edit/saving.py``: the model, its diff and the train log). ``memory_stage`` is checked
    against the memory left before the training. A ``ladder`` of learning rates is climbed when
    the target is missed (``train_with_ladder``). None in a process of a multi-process launch
    other than the main one, which writes."""
    if ladder and accelerator is not None:
        raise MechunlearnError("the lr ladder runs in one process; launch without accelerate or leave it out")
    check_output_dir(lm, output.folder, (LOG_FILE, DIFF_FILE))
    split, report = known_split(lm, facts, choice)
    before = quick_eval(lm, split)
    if memory_stage is not None:
        check_stage(memory_stage, lm.device, loaded=True)
    climbed = None
    if ladder:
        result, climbed = train_with_ladder(lm, components, split, config, ladder, base_hash=base_hash)
        _report_missed(result, require_target, warn)
    else:
        result = train_split(lm, components, split, config, base_hash=base_hash, accelerator=accelerator,
                             require_target=require_target, warn=warn)
    if accelerator is not None and not accelerator.is_main_process:
        return None
    after = quick_eval(lm, split)
    if set(after) != set(before) or not all(math.isfinite(v) for v in after.values()):
        raise TrainingDivergedError(f"the edited model's quick evaluation is not a number ({after}): the edit "
                                    "diverged; nothing was written")
    extra = {"selection": output.selection, "quick_eval": {"before": before, "after": after}}
    if climbed is not None:
        extra["lr_ladder"] = climbed
    save_edit(lm, result, output.folder, base_spec=output.base_spec, facts=_facts_record(choice, report, output),
              extra=extra)
    return EditOutcome(report, split, result, before, after, climbed)


def _facts_record(choice: FactChoice, report: KnownReport, output: EditOutput) -> dict:
    relation = {"relation": choice.relation} if choice.relation is not None else {}
    return {"dataset": choice.dataset, "data": output.data, "seed": choice.seed, "threshold": report.threshold,
            "known": len(report.known), "total": report.total, **relation}
