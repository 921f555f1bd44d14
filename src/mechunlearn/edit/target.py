"""Training to a stated strength: the forget facts' strength measured the way the evaluation
scores its training format (``answer_probs``: closed answer sets normalised over the set, open
ones over the vocabulary at the answer's first token), checked every few steps and after the last."""

from __future__ import annotations

import math

import torch

from mechunlearn.edit.config import EditConfig
from mechunlearn.errors import TrainingDivergedError
from mechunlearn.facts import FactSet, answer_probs


def strength_measure(answer: str, facts: FactSet) -> str:
    """In words, what :func:`forget_strength` measures (``answer``: the objective's ``new`` or ``true``)."""
    what = "mean P(edit target)" if answer == "new" else "1 - mean P(true)"
    over = "normalised over the answer set" if facts.closed else "full vocabulary, first answer token"
    return f"{what} on the forget facts' training prompts ({over})"


@torch.no_grad()
def forget_strength(model, tokenizer, facts: FactSet, answer: str, batch_size: int = 32) -> float:
    """Editing (``answer`` ``new``): mean P(edit target); unlearning (``true``): 1 - mean P(true)."""
    was_training = model.training
    model.eval()
    try:
        p_true, p_new = answer_probs(model, tokenizer, facts, batch_size=batch_size)
    finally:
        model.train(was_training)
    return float(p_new.mean()) if answer == "new" else 1.0 - float(p_true.mean())


class TargetTracker:
    """The checks of one run: due every ``check_every`` steps and at the cap; every process of a
    data-parallel run takes the mean of all processes' measurements, so all stop together."""

    def __init__(self, lm, facts: FactSet, answer: str, config: EditConfig, parallel):
        self.lm, self.facts, self.answer, self.config, self.parallel = lm, facts, answer, config, parallel
        self.batch_size = max(1, config.forget_batch_size // config.grad_accum)
        self.checks: list[list[float]] = []

    def due(self, steps_done: int) -> bool:
        return steps_done % self.config.check_every == 0 or steps_done == self.config.steps

    def measure(self) -> float:
        value = forget_strength(self.lm.model, self.lm.tokenizer, self.facts, self.answer, self.batch_size)
        if self.parallel.world > 1:
            total = torch.tensor([value], dtype=torch.float64, device=self.lm.device)
            self.parallel.sum_([total])
            value = float(total) / self.parallel.world
        return value

    def check(self, steps_done: int) -> bool:
        """Measure after ``steps_done`` steps; True when the target is reached."""
        value = self.measure()
        if not math.isfinite(value):
            raise TrainingDivergedError(f"step {steps_done}/{self.config.steps}: the forget strength is {value}; "
                                        "the model's weights were restored and nothing was written")
        self.checks.append([steps_done, value])
        return value >= self.config.target

    def record(self, steps: int, remeasure: bool = False) -> dict:
        """``remeasure``: the weights changed after the last check (a binarized mask)."""
        strength = self.measure() if remeasure or not self.checks else self.checks[-1][1]
        return {"target": self.config.target, "measure": strength_measure(self.answer, self.facts),
                "reached": strength >= self.config.target, "steps": steps, "strength": strength,
                "checks": self.checks}
