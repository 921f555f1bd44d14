"""Training hyperparameters chosen on facts that are never evaluated.

The validation carve comes out of the maintain-train facts of the split (which no evaluation,
attack or localization reads): a third of them become stand-in facts to edit (their own edit
targets, or the setting's category target), a fifth of the rest the maintain-validation facts, and
the remainder the maintain-train facts of the trial edits. Every combination of the swept values
trains one trial edit on that carve; the choice follows the stated rule. A trial step sees the share
of the stand-in facts that the arm's step sees of its forget set (a forget set four batches long:
a quarter of the carve a step), so that steps to the target on the carve stand for steps on the
forget set. The blocks of a sequential
setting share their maintain-train facts: their carve is one block-sized trial edit, and the chosen
values train every block."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.trainer import TrainResult
from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import Split, answer_probs

RULE_TARGET = ("among the candidates that reach the training-strength target on the validation carve and keep "
               "the maintain-validation P(true) drop <= {drop}, the fewest steps, then the smallest drop; if none "
               "reaches it, the highest strength within the drop bound; if none keeps the bound, the smallest "
               "drop among the candidates that reach the target, else among all")
LADDER_RULE = ("an arm that misses the training target within the step cap at the configured lr (a sequential arm: "
               "in any block) is trained again, every block from the original weights, at one of the learning rates "
               "{ladder}, chosen on the validation carve by the sweep rule of its setting")
RULE_STRENGTH = ("the highest strength on the validation carve among the candidates whose maintain-validation "
                 "P(true) drop is <= {drop}; if none, the smallest drop")


def validation_split(split: Split) -> Split:
    """Stand-in facts to edit, maintain-train and maintain-validation facts, all carved from
    ``split.maintain_train``."""
    ids = [f.id for f in split.maintain_train]
    n_edit = min(len(split.forget), len(ids) // 3)
    n_val = max(1, (len(ids) - n_edit) // 5)
    if n_edit < 1 or len(ids) - n_edit - n_val < 1:
        raise MechunlearnError(f"the sweep needs a validation carve of the maintain-train facts; only {len(ids)}")
    pool = split.maintain_train
    category_target = {f.target_new for f in split.forget} if split.mode == "category" else set()
    edit = pool.by_id(ids[:n_edit])
    if len(category_target) == 1:
        target = next(iter(category_target))
        edit = edit.subset([f.with_target(target) for f in edit if f.target_true != target])
    return Split(edit, edit, pool.by_id(ids[n_edit + n_val:]), pool.by_id(ids[n_edit:n_edit + n_val]), split.seed,
                 f"validation carve of the maintain-train facts ({len(edit)} to edit, {n_val} maintain-validation)",
                 "validation")


def carve_batch_size(forget_batch_size: int, n_forget: int, n_carve: int) -> int:
    """The forget batch of a trial step on ``n_carve`` stand-in facts that covers the share of them
    that a batch of ``forget_batch_size`` covers of ``n_forget`` facts."""
    if forget_batch_size >= n_forget:
        return forget_batch_size
    return max(1, math.ceil(n_carve * forget_batch_size / n_forget))


def strength(lm, facts, objective: str) -> float:
    p_true, p_new = answer_probs(lm.model, lm.tokenizer, facts)
    return float(p_new.mean()) if objective == "edit" else 1 - float(p_true.mean())


def sweep(cfg: EditConfig, grid_spec: dict, split: Split, fresh_model: Callable, train_fn: Callable
          ) -> tuple[EditConfig, dict]:
    """``train_fn(lm, split, config) -> TrainResult`` trains the arm's components; ``fresh_model()``
    gives the unedited model."""
    grid = {k: v for k, v in grid_spec.items() if k != "max_maintain_drop"}
    max_drop = float(grid_spec.get("max_maintain_drop", 0.05))
    carve = validation_split(split)
    lm = fresh_model()
    before = float(answer_probs(lm.model, lm.tokenizer, carve.maintain_test)[0].mean())
    trials = []
    for values in itertools.product(*grid.values()):
        chosen = dict(zip(grid, values, strict=True))
        candidate = replace(cfg, **chosen)
        on_carve = carve_batch_size(candidate.forget_batch_size, len(split.forget), len(carve.forget))
        lm = fresh_model()
        result = train_fn(lm, carve, replace(candidate, forget_batch_size=on_carve))
        maintain = float(answer_probs(lm.model, lm.tokenizer, carve.maintain_test)[0].mean())
        target = getattr(result, "target", None) or {}
        trials.append({"values": chosen, "forget_score": strength(lm, carve.forget, cfg.objective),
                       "maintain_val_p_true": maintain, "maintain_drop": before - maintain,
                       "reached": target.get("reached"), "steps": target.get("steps", len(result.history)),
                       **({"carve_forget_batch_size": on_carve} if on_carve != candidate.forget_batch_size else {})})
    best = choose(trials, max_drop, with_target=cfg.target is not None)
    rule = (RULE_TARGET if cfg.target is not None else RULE_STRENGTH).format(drop=max_drop)
    ids = {k: [f.id for f in getattr(carve, k)] for k in ("forget", "maintain_train", "maintain_test")}
    return replace(cfg, **best["values"]), {"trials": trials, "chosen": best["values"], "rule": rule,
                                            "maintain_val_before": before, "n_val": len(carve.maintain_test),
                                            "carve": ids}


def choose(trials: list[dict], max_drop: float, with_target: bool) -> dict:
    within = [t for t in trials if t["maintain_drop"] <= max_drop]
    if with_target:
        reached = [t for t in within if t["reached"]]
        if reached:
            return min(reached, key=lambda t: (t["steps"], t["maintain_drop"]))
    if within:
        return max(within, key=lambda t: t["forget_score"])
    # past the bound, the drop no longer tells a fair candidate from an unfair one; the target does
    reached = [t for t in trials if t["reached"]] if with_target else []
    return min(reached or trials, key=lambda t: t["maintain_drop"])


def first_attempt(results: list[TrainResult]) -> dict:
    """What the configured lr reached before the arm climbed the ladder (sequential: over its blocks)."""
    if len(results) == 1:
        return {"lr": results[0].config.lr, **results[0].target}
    targets = [r.target for r in results]
    return {"lr": results[0].config.lr, "reached": False, "steps": sum(t["steps"] for t in targets),
            "strength": sum(t["strength"] for t in targets) / len(targets),
            "missed_blocks": [i + 1 for i, t in enumerate(targets) if not t["reached"]]}
