"""One training step's forward and backward passes: the three loss terms over this process's
share of the step's batch, micro-batch by micro-batch (gradients accumulate in the model)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.data import FactTerm, micro_batches
from mechunlearn.edit.objectives import FactLogits, FactObjective, general_lm_loss
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import encode, unembed

TERMS = ("forget", "maintain", "general")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; nothing on CPU (bf16 matmuls are emulated there)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fact_logits(model: nn.Module, hidden: torch.Tensor, term: FactTerm, rows: list[int]) -> FactLogits:
    logits = unembed(model, hidden, term.columns).float()
    target = term.targets[rows].to(logits.device)
    reference = None if term.reference is None else term.reference[rows].to(logits.device)
    return FactLogits(logits, target, reference)


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def coef(self) -> dict[str, float]:
        c = self.config
        return {"forget": c.c_forget, "maintain": c.c_maintain, "general": c.c_general}

    def backward(self, drawn: dict[str, list[int]], rank: int, world: int) -> torch.Tensor:
        """Backward of ``sum_k c_k * mean-over-the-global-batch loss_k`` restricted to this
        process's rows; returns the summed (unweighted) per-example losses of each term."""
        sums = torch.zeros(len(TERMS), dtype=torch.float64)
        parts = [micro_batches(drawn[k], rank, world, self.config.grad_accum) for k in TERMS]
        for f_rows, m_rows, g_rows in zip(*parts, strict=True):
            self._facts(f_rows, m_rows, len(drawn["forget"]), len(drawn["maintain"]), sums)
            if self.windows is not None and g_rows:
                self._general(g_rows, len(drawn["general"]), sums)
        return sums

    def _facts(self, f_rows: list[int], m_rows: list[int], n_forget: int, n_keep: int, sums: torch.Tensor) -> None:
        coef = self.coef
        f_rows = f_rows if coef["forget"] > 0 else []
        m_rows = m_rows if coef["maintain"] > 0 else []
        if not f_rows and not m_rows:
            return
        prompts = [self.forget.prompts[i] for i in f_rows] + [self.keep.prompts[i] for i in m_rows]
        with autocast(self.device, self.config.autocast):
            hidden = final_hidden_shared(self.model, encode(self.tokenizer, prompts, device=self.device))
        total = hidden.new_zeros((), dtype=torch.float32)
        if f_rows:
            losses = self.objective.loss(fact_logits(self.model, hidden[: len(f_rows)], self.forget, f_rows), self.config)
            sums[0] += losses.detach().sum().cpu()
            total = total + coef["forget"] * losses.sum() / n_forget
        if m_rows:
            losses = self.maintain.loss(fact_logits(self.model, hidden[len(f_rows):], self.keep, m_rows), self.config)
            sums[1] += losses.detach().sum().cpu()
            total = total + coef["maintain"] * losses.sum() / n_keep
        total.backward()

    def _general(self, rows: list[int], n_windows: int, sums: torch.Tensor) -> None:
        with autocast(self.device, self.config.autocast):
            losses = general_lm_loss(self.model, self.windows[rows].to(self.device))
        sums[2] += losses.detach().sum().cpu()
        (self.coef["general"] * losses.sum() / n_windows).backward()
