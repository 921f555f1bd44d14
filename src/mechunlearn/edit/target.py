"""Training to a stated strength: the forget facts' strength measured the way the evaluation
scores its training format (``answer_probs``: closed answer sets normalised over the set, open
ones over the vocabulary at the answer's first token), checked every few steps and after the last.

With a band, a run that overshoots (its check lands above ``target + band``) is walked back along
the straight line from the weights of the previous check (below the target) to its own, by
bisection, until the strength lies in ``[target, target + band]``: every arm then ends within the
band, however large its last step was."""

from __future__ import annotations

import math

import torch

from mechunlearn.edit.config import EditConfig
from mechunlearn.errors import TrainingDivergedError
from mechunlearn.facts import FactSet, answer_probs
from mechunlearn.models.precision import autocasts
from mechunlearn.models.scoring import answer_tokens, unembed


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
    data-parallel run takes the mean of all processes' measurements, so all stop together.

    A check due after step k can ride on step k+1's forward pass, which runs every forget prompt
    at the same weights anyway (:meth:`strength_of`; see :meth:`folds` for when it can): the run
    then stops before that step's backward, and the check costs no pass of its own."""

    fold = True  # read checks off the next step's forward pass where :meth:`folds` allows

    def __init__(self, lm, facts: FactSet, answer: str, config: EditConfig, parallel):
        self.lm, self.facts, self.answer, self.config, self.parallel = lm, facts, answer, config, parallel
        self.batch_size = max(1, config.forget_batch_size // config.grad_accum)
        tokens = answer_tokens(lm.tokenizer, facts)
        which = "new" if answer == "new" else "true"
        self._columns = tokens.answers  # the logit columns the evaluation normalises over; None: vocabulary
        self._answer = tokens.columns(which) if tokens.answers is not None else tokens.ids(which)
        self.checks: list[list[float]] = []
        self.strength: float | None = None
        self.shortened: dict | None = None
        self._anchor: list[torch.Tensor] | None = None  # the weights at the last check below the target

    @property
    def band(self) -> float | None:
        return self.config.target_band

    def start(self, weights) -> None:
        if self.band is not None:
            self._anchor = weights.snapshot()

    def due(self, steps_done: int) -> bool:
        return steps_done % self.config.check_every == 0 or steps_done == self.config.steps

    def folds(self) -> bool:
        """Whether a check can be read off the next step's forward: that pass holds every forget
        prompt (one micro-batch, a forget batch as large as the facts, one process) in fp32."""
        c = self.config
        return (self.fold and self.parallel.world == 1 and c.grad_accum == 1 and c.c_forget > 0
                and c.forget_batch_size >= len(self.facts) and not autocasts(self.lm.device, c.autocast, c.cpu_bf16))

    @torch.no_grad()
    def strength_of(self, hidden: torch.Tensor, rows: list[int]) -> float:
        """The strength from the forget prompts' final hidden states (``rows``: their fact indices),
        scored as :func:`forget_strength` scores them."""
        probs = unembed(self.lm.model, hidden.detach(), self._columns).float().softmax(-1)
        answer = self._answer[rows].to(probs.device)
        value = float(probs.gather(1, answer[:, None]).mean())
        return value if self.answer == "new" else 1.0 - value

    def measure(self) -> float:
        value = forget_strength(self.lm.model, self.lm.tokenizer, self.facts, self.answer, self.batch_size)
        if self.parallel.world > 1:
            total = torch.tensor([value], dtype=torch.float64, device=self.lm.device)
            self.parallel.sum_([total])
            value = float(total) / self.parallel.world
        return value

    def _measured(self, steps_done: int, value: float | None = None) -> float:
        value = self.measure() if value is None else value
        if not math.isfinite(value):
            raise TrainingDivergedError(f"step {steps_done}/{self.config.steps}: the forget strength is {value}; "
                                        "the model's weights were restored and nothing was written")
        return value

    def check(self, steps_done: int, weights, value: float | None = None) -> bool:
        """Measure after ``steps_done`` steps (or take ``value``, read off the next step's forward);
        True when the target is reached (with a band: the weights are then inside it, or as close
        above it as the search came)."""
        value = self._measured(steps_done, value)
        self.checks.append([steps_done, value])
        self.strength = value
        if value < self.config.target:
            if self.band is not None:
                self._anchor = weights.snapshot()
            return False
        if self.band is not None and value > self.config.target + self.band:
            self._walk_back(steps_done, weights)
        return True

    def _walk_back(self, steps_done: int, weights, evaluations: int = 8) -> None:
        low, high, end = 0.0, 1.0, weights.snapshot()
        target, top = self.config.target, self.config.target + self.band
        search, best = [], (1.0, self.strength)
        for _ in range(evaluations):
            fraction = (low + high) / 2
            weights.set_between(self._anchor, end, fraction)
            value = self._measured(steps_done)
            search.append([fraction, value])
            if value < target:
                low = fraction
            elif value > top:
                high, best = fraction, (fraction, value)
            else:
                best = (fraction, value)
                break
        fraction, value = best
        if search[-1][0] != fraction:
            weights.set_between(self._anchor, end, fraction)
        self.shortened = {"overshoot": self.strength, "fraction": fraction, "in_band": value <= top,
                          "search": search}
        self.strength = value

    def record(self, steps: int, remeasure: bool = False) -> dict:
        """``remeasure``: the weights changed after the last check (a binarized mask)."""
        strength = self.measure() if remeasure or self.strength is None else self.strength
        out = {"target": self.config.target, "measure": strength_measure(self.answer, self.facts),
               "reached": strength >= self.config.target, "steps": steps, "strength": strength,
               "checks": self.checks}
        if self.band is not None:
            out["band"] = self.band
            out["last_stretch"] = self.shortened  # None: no overshoot past the band
        return out
