"""Metrics read from the final hidden state at each prompt's last token.

* ``p_true``: each prompt's OWN true-answer probability (closed answer sets: softmax over the
  set; open vocabulary: full-vocabulary softmax of the answer's first token).
* ``logit_diff``: closed sets: logit(true) - mean logit of the other answers in the set;
  open vocabulary: logit(true) - logit(edit target).

Normalised effects are ratios of sums over prompts (``sum(patched - clean) / sum(corrupt -
clean)``), so that a prompt whose corruption barely moves its metric cannot blow the ratio up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.facts import FactSet
from mechunlearn.models.scoring import answer_tokens, first_token_clashes, unembed


@dataclass
class Readout:
    logit_diff: torch.Tensor  # [N]
    p_true: torch.Tensor  # [N]


class AnswerScorer:
    """Scores hidden states of the prompts of ``facts`` (row ``i`` belongs to fact ``index[i]``)."""

    def __init__(self, tokenizer, facts: FactSet):
        self.closed = facts.closed
        tokens = answer_tokens(tokenizer, facts)
        self.true_ids = tokens.true
        if self.closed:
            self.answer_ids = torch.tensor(tokens.answers)
            self.true_pos = tokens.true_column
        else:
            no_target = [f.id for f in facts if not f.target_new]
            if no_target:
                raise FactDataError(f"open-vocabulary facts need an edit target for the logit difference: {no_target[:5]}")
            self.new_ids = tokens.new
            same = first_token_clashes(tokenizer, facts)
            if same:
                raise FactDataError(f"true answer and edit target share their first token for {same[:5]}")

    def _logits(self, model: nn.Module, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Closed: [N, K] logits of the answer set; open: [N, 2] logits of (true, edit target)."""
        if self.closed:
            return unembed(model, hidden, self.answer_ids.to(hidden.device)).float().cpu()
        ids = torch.stack([self.true_ids[index], self.new_ids[index]], 1)
        uniq, inverse = torch.unique(ids, return_inverse=True)
        return unembed(model, hidden, uniq.to(hidden.device)).float().cpu()[torch.arange(len(index))[:, None], inverse]

    def logit_diff(self, model: nn.Module, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Differentiable logit difference of each row: [N]."""
        return self._diff(self._logits(model, hidden, index.cpu()), index.cpu())

    def _diff(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if not self.closed:
            return logits[:, 0] - logits[:, 1]
        true = logits[torch.arange(len(index)), self.true_pos[index]]
        return true - (logits.sum(1) - true) / max(logits.shape[1] - 1, 1)

    @torch.no_grad()
    def read(self, model: nn.Module, hidden: torch.Tensor, index: torch.Tensor, need_p: bool = True) -> Readout:
        """``hidden``: [N, d] final (normed) hidden states; ``index``: [N] fact of each row."""
        index = index.cpu()
        logits = self._logits(model, hidden, index)
        if self.closed:
            p = logits.softmax(-1)[torch.arange(len(index)), self.true_pos[index]]
        elif need_p:
            p = (logits[:, 0] - _full_logsumexp(model, hidden)).exp()
        else:
            p = torch.full((len(index),), float("nan"))
        return Readout(self._diff(logits, index), p)


def _full_logsumexp(model: nn.Module, hidden: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    out = [unembed(model, hidden[i:i + chunk]).float().logsumexp(-1).cpu() for i in range(0, len(hidden), chunk)]
    return torch.cat(out)


def require_effect(clean: torch.Tensor, corrupt: torch.Tensor, what: str) -> None:
    """Raise when the corruption does not move the metric: every normalised score would be 0/0."""
    if float((corrupt - clean).sum().abs()) < 1e-6 * max(1, clean.numel()):
        raise MechunlearnError(
            f"the corruption does not change the {what} (clean {float(clean.mean()):.4g}, corrupted "
            f"{float(corrupt.mean()):.4g}): nothing to localize. Does the model know these facts?")


def normalized_effect(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> float:
    """sum(patched - clean) / sum(corrupt - clean): 1 = the patch alone moves the metric as far
    as the whole corruption, 0 = no effect. Tensors broadcast; sums run over every element."""
    total = (corrupt - clean).expand_as(patched).sum()
    if total.abs() < 1e-8:
        return 0.0
    return float((patched - clean).sum() / total)


def recovery(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> float:
    """sum(patched - corrupt) / sum(clean - corrupt): the fraction of the corrupted metric that
    restoring a component brings back."""
    total = (clean - corrupt).expand_as(patched).sum()
    if total.abs() < 1e-8:
        return 0.0
    return float((patched - corrupt).sum() / total)
