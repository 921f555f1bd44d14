"""Every knob of a localized edit, in one plain dataclass (written next to each result)."""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import asdict, dataclass, fields, replace

from mechunlearn.errors import MechunlearnError

FORGET_OVER = ("auto", "vocab", "answers")
FLOATS = ("lr", "c_forget", "c_maintain", "c_general", "grad_clip", "weight_decay", "log1m_cutoff", "npo_beta",
          "mask_l1", "mask_threshold", "target", "target_band")
INTS = ("steps", "forget_batch_size", "maintain_batch_size", "general_batch_size", "general_length", "warmup",
        "grad_accum", "seed", "check_every")
BOOLS = ("weight_mask", "autocast", "cpu_bf16")
MAX_STEPS, MAX_WEIGHT = 1_000_000, 1e6  # beyond these a value is a slip of the keyboard
# the step cap of every edit by default (`mechunlearn edit`, a run's arms, the demo): training stops
# at the target strength, and at lr 1e-4 every localized arm of docs/results.md that reached 0.9
# did so within 21 steps; an arm still short at 30 climbs the lr ladder, so a higher cap would
# only make each miss (paid once at the configured lr and once per rung) dearer
DEFAULT_STEPS = 30
# the forget objectives edit/objectives/ registers (tests/test_cli_startup.py checks this list)
BUILTIN_FORGET_OBJECTIVES = ("edit", "grad_ascent", "log1m", "npo")


def forget_objective_names() -> list[str]:
    """The forget objectives' names without importing torch: the built-in ones, and any registered
    since (registering one imports the registry, ``edit/objectives/base.py``)."""
    registry = sys.modules.get("mechunlearn.edit.objectives.base")
    return sorted({*BUILTIN_FORGET_OBJECTIVES, *(registry.forget_objectives() if registry else ())})


@dataclass
class EditConfig:
    """Loss = c_forget * forget term + c_maintain * maintain term + c_general * general-text LM term.

    Batch sizes are per optimizer step (the global batch, whatever the number of processes);
    ``grad_accum`` splits each step's batch into that many micro-batches to save memory and
    gives the same update.

    With a ``target`` the run stops at the first check where the forget strength (editing: mean
    P(edit target); unlearning: 1 - mean P(true); the training prompts, scored as the evaluation
    scores its training format) reaches it, and ``steps`` is the cap; with a ``target_band`` a
    check that lands above ``target + target_band`` is walked back into the band. The cosine
    schedule is laid over the cap, so the learning rate at step t is the same for every arm
    whatever its stopping step (an arm that stops early stops at a higher lr, not on a
    compressed schedule).
    """

    objective: str = "edit"  # edit | log1m | grad_ascent | npo
    steps: int = DEFAULT_STEPS  # with a target: the cap
    lr: float = 1e-4
    c_forget: float | None = None  # None: the objective's default (edit, grad_ascent, npo: 1.0; log1m: 0.2)
    c_maintain: float = 1.0
    c_general: float = 1.0
    forget_batch_size: int = 16
    maintain_batch_size: int = 16
    general_batch_size: int = 2
    general_length: int = 64  # tokens per general-text window
    general_text: str | None = None  # None: the built-in text; a text file (paragraphs split by blank lines)
    warmup: int = 0  # linear warm-up steps before the cosine decay
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    grad_accum: int = 1
    weight_decay: float = 0.0
    seed: int = 0
    # the forget term's softmax: over the full vocabulary, or over a closed answer set only.
    # "auto": vocab for edit (the paper's CE), answers for unlearning on a closed set (see resolve_forget_over)
    forget_over: str = "auto"
    log1m_cutoff: float = -5.0  # log1m terms with log p_true below this are zeroed (the paper)
    npo_beta: float = 0.1
    # weight-mask variant: learn W = W0 * M, M in [0, 1] elementwise, L1 penalty on (1 - M)
    weight_mask: bool = False
    mask_l1: float = 1e-6  # coefficient of sum(1 - M) (a sum over all mask entries)
    mask_threshold: float | None = None  # binarize M >= threshold after training; None keeps it soft
    autocast: bool = True  # bf16 autocast when the model is on CUDA
    cpu_bf16: bool = False  # bf16 autocast on a CPU with native bf16 (models/precision.py); an error on others
    target: float | None = None  # stop when the forget strength reaches this, in (0, 1]; None: train all steps
    check_every: int = 2  # steps between strength checks (and one after the last step)
    # with a target: a check above target + band walks the weights back along the last stretch
    # (since the previous check) until the strength lies in [target, target + band]; None: no walk-back
    target_band: float | None = None

    def validate(self) -> EditConfig:
        if self.objective not in forget_objective_names():
            raise MechunlearnError(f"unknown objective {self.objective!r}: use one of {forget_objective_names()}")
        self._check_types()
        positive = ("steps", "forget_batch_size", "maintain_batch_size", "general_batch_size", "grad_accum",
                    "check_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise MechunlearnError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise MechunlearnError(f"seed must be a whole number from 0 to {2**32 - 1}, got {self.seed}")
        if self.general_length < 2:
            raise MechunlearnError(f"general_length must be >= 2 tokens, got {self.general_length}")
        if not self.lr > 0:
            raise MechunlearnError(f"lr must be > 0, got {self.lr}")
        for name in ("c_forget", "c_maintain", "c_general", "grad_clip", "weight_decay", "mask_l1", "warmup"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise MechunlearnError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("c_forget", "c_maintain", "c_general"):
            if (getattr(self, name) or 0) > MAX_WEIGHT:
                raise MechunlearnError(f"{name} {getattr(self, name):g} is above {MAX_WEIGHT:g}: the other terms "
                                       "vanish beside it; weigh the terms against each other with smaller numbers")
        if self.c_forget == 0 and self.c_maintain == 0 and self.c_general == 0:
            raise MechunlearnError("c_forget, c_maintain and c_general are all 0: the loss is zero and nothing "
                                   "would train")
        if self.steps > MAX_STEPS:
            raise MechunlearnError(f"steps {self.steps} is above {MAX_STEPS:,}: give a cap a run can reach")
        if self.warmup >= self.steps and self.warmup > 0:
            raise MechunlearnError(f"warmup ({self.warmup}) must be shorter than steps ({self.steps})")
        if self.forget_over not in FORGET_OVER:
            raise MechunlearnError(f"forget_over must be one of {FORGET_OVER}, got {self.forget_over!r}")
        if self.npo_beta <= 0:
            raise MechunlearnError(f"npo_beta must be > 0, got {self.npo_beta}")
        if self.mask_threshold is not None and not 0 <= self.mask_threshold <= 1:
            raise MechunlearnError(f"mask_threshold must lie in [0, 1], got {self.mask_threshold}")
        if self.target is not None and not 0 < self.target <= 1:
            raise MechunlearnError(f"target must lie in (0, 1] (a forget strength), got {self.target}")
        if self.target_band is not None and not 0 < self.target_band < 1:
            raise MechunlearnError(f"target_band must lie in (0, 1) (the overshoot of a strength allowed above the "
                                   f"target), got {self.target_band}")
        return self

    def inert(self) -> list[str]:
        """Values that nothing reads in this config (accepted, since each means something in
        another one): what a user would want to hear before a run ignores them."""
        defaults = EditConfig()
        lines = [f"{name} {getattr(self, name)} has no effect without weight_mask"
                 for name in ("mask_l1", "mask_threshold") if not self.weight_mask
                 and getattr(self, name) != getattr(defaults, name)]
        if self.target is None and self.target_band is not None:
            lines.append(f"target_band {self.target_band} has no effect without a target")
        if self.target is not None and 1 < self.steps <= self.check_every:
            lines.append(f"check_every {self.check_every} is not below steps {self.steps}: the target is checked "
                         "only after the last step, so training never stops early")
        return lines

    def _check_types(self) -> None:
        """Numbers are numbers (finite ones for floats) and flags are booleans: a NaN coefficient
        would pass every range check and silently switch a term off."""
        for name in FLOATS:
            value = getattr(self, name)
            if value is None and name in ("c_forget", "mask_threshold", "target", "target_band"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) else ""
                raise MechunlearnError(f"{name} must be a number, got {value!r}{hint}")
            if not math.isfinite(value):
                raise MechunlearnError(f"{name} must be a finite number, got {value}")
        for name in INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise MechunlearnError(f"{name} must be a whole number, got {value!r}")
        for name in BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise MechunlearnError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("objective", "forget_over"):
            if not isinstance(getattr(self, name), str):
                raise MechunlearnError(f"{name} must be a name, got {getattr(self, name)!r}")
        if self.general_text is not None and not isinstance(self.general_text, str):
            raise MechunlearnError(f"general_text must be a path or hf:DATASET, got {self.general_text!r}")

    def resolve_forget_over(self, closed: bool) -> str:
        """Unlearning on a closed answer set (sports) is scored over the answers: over the full
        vocabulary, log1m can push p_true below its cutoff by lowering every answer at once (the
        model stops naming a sport) while the true one still leads among the answers."""
        if self.forget_over != "auto":
            return self.forget_over
        return "answers" if closed and self.objective != "edit" else "vocab"

    def resolved(self, closed: bool) -> EditConfig:
        """A copy with every "default" filled in (what a run records)."""
        from mechunlearn.edit.objectives import get_objective

        c_forget = self.c_forget if self.c_forget is not None else get_objective(self.objective).c_forget
        return replace(self, c_forget=c_forget, forget_over=self.resolve_forget_over(closed)).validate()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> EditConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MechunlearnError(f"unknown edit config keys: {sorted(unknown)}")
        return cls(**data)
