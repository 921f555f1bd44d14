"""One training step's forward and backward passes: the three loss terms over this process's
share of the step's batch, micro-batch by micro-batch (gradients accumulate in the model). Within
a micro-batch the terms share one projection to the vocabulary and one backward pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.data import FactTerm, micro_batches
from mechunlearn.edit.objectives import FactLogits, FactObjective
from mechunlearn.edit.objectives.lm import lm_hidden, window_losses
from mechunlearn.models.encoding import encode
from mechunlearn.models.precision import FrozenBf16, step_autocast
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import unembed_together

TERMS = ("forget", "maintain", "general")


def fact_logits(logits: torch.Tensor, term: FactTerm, rows: list[int]) -> FactLogits:
    target = term.targets[rows].to(logits.device)
    reference = None if term.reference is None else term.reference[rows].to(logits.device)
    return FactLogits(logits.float(), target, reference)


@dataclass
class LossTerms:
    model: nn.Module
    tokenizer: object
    config: EditConfig
    objective: FactObjective  # the forget term
    maintain: FactObjective
    forget: FactTerm
    keep: FactTerm
    windows: torch.Tensor | None  # general-text windows, None when c_general == 0
    frozen: FrozenBf16 | None = None  # bf16 copies of the frozen weights for the CPU's bf16 steps

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def coef(self) -> dict[str, float]:
        c = self.config
        return {"forget": c.c_forget, "maintain": c.c_maintain, "general": c.c_general}

    def backward(self, drawn: dict[str, list[int]], rank: int, world: int,
                 stop_if: Callable[[torch.Tensor, list[int]], bool] | None = None) -> torch.Tensor | None:
        """Backward of ``sum_k c_k * mean-over-the-global-batch loss_k`` restricted to this
        process's rows; returns the summed (unweighted) per-example losses of each term.
        ``stop_if(forget hidden states, their rows)`` is asked after the fact prompts' pass; when
        it says stop, nothing more is computed and None is returned."""
        sums = torch.zeros(len(TERMS), dtype=torch.float64)
        parts = [micro_batches(drawn[k], rank, world, self.config.grad_accum) for k in TERMS]
        sizes = [len(drawn[k]) for k in TERMS]
        for rows in zip(*parts, strict=True):
            if self._micro_batch(*rows, sizes, sums, stop_if):
                return None
        return sums

    def _micro_batch(self, f_rows: list[int], m_rows: list[int], g_rows: list[int], sizes: list[int],
                     sums: torch.Tensor, stop_if=None) -> bool:
        """The three terms' forward passes, one projection to the vocabulary shared by every term
        that needs the full vocabulary, and one backward; True when ``stop_if`` stopped it."""
        coef = self.coef
        f_rows = f_rows if coef["forget"] > 0 else []
        m_rows = m_rows if coef["maintain"] > 0 else []
        g_rows = g_rows if self.windows is not None else []
        terms: list[tuple[int, torch.Tensor, list[int] | None]] = []  # (term index, hidden rows, columns)
        labels = None
        with step_autocast(self.device, self.config.autocast, self.config.cpu_bf16, self.frozen):
            if f_rows or m_rows:
                prompts = [self.forget.prompts[i] for i in f_rows] + [self.keep.prompts[i] for i in m_rows]
                hidden = final_hidden_shared(self.model, encode(self.tokenizer, prompts, device=self.device))
                if stop_if is not None and stop_if(hidden[: len(f_rows)], f_rows):
                    return True
                if f_rows:
                    terms.append((0, hidden[: len(f_rows)], self.forget.columns))
                if m_rows:
                    terms.append((1, hidden[len(f_rows):], self.keep.columns))
            if g_rows:
                hidden, labels = lm_hidden(self.model, self.windows[g_rows].to(self.device))
                terms.append((2, hidden.reshape(-1, hidden.shape[-1]), None))
            if not terms:
                return False
            logits = unembed_together(self.model, [(h, columns) for _, h, columns in terms])
        total = logits[0].new_zeros((), dtype=torch.float32)
        for (k, _, _), term_logits in zip(terms, logits, strict=True):
            if k == 2:
                losses = window_losses(term_logits, labels)
            else:
                term, objective, rows = (self.forget, self.objective, f_rows) if k == 0 else (self.keep, self.maintain, m_rows)
                losses = objective.loss(fact_logits(term_logits, term, rows), self.config)
            sums[k] += losses.detach().sum().cpu()
            total = total + self.coef[TERMS[k]] * losses.sum() / sizes[k]
        total.backward()
        return False
