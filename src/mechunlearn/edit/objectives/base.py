"""What a fact objective sees, and the registry every objective adds itself to.

An objective maps the last-token logits of a batch of prompts to one loss per prompt; the
trainer weights and sums them (so micro-batches and processes add up to the same step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mechunlearn.registry import Registry


@dataclass
class FactLogits:
    logits: torch.Tensor  # [B, C] float32: full vocabulary or a closed answer set
    target: torch.Tensor  # [B] index into C of the answer this term is about
    reference: torch.Tensor | None = None  # [B] log p(target) before training (NPO)

    def target_logp(self) -> torch.Tensor:
        logp = self.logits.float().log_softmax(-1)
        return logp.gather(-1, self.target[:, None]).squeeze(-1)


@dataclass(frozen=True)
class FactObjective:
    name: str
    role: str  # "forget" (the edit/unlearn term) or "maintain"
    answer: str  # which answer the logits are scored against: "new" (edit target) or "true"
    loss: Callable[[FactLogits, object], torch.Tensor]  # (batch, EditConfig) -> [B] losses
    needs_reference: bool = False
    summary: str = ""
    c_forget: float = 1.0  # default weight of this objective's term when it is the forget term


OBJECTIVES: Registry[FactObjective] = Registry("objective")
register = OBJECTIVES.register
get_objective = OBJECTIVES.find


def forget_objectives() -> list[str]:
    return sorted(n for n, o in OBJECTIVES.items() if o.role == "forget")
