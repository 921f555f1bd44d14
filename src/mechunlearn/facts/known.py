"""Which facts does a model know? Batched last-token scoring of P(true answer)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from mechunlearn.errors import FactDataError
from mechunlearn.facts.records import FactSet
from mechunlearn.models.encoding import encode
from mechunlearn.models.scoring import (
    answer_tokens,
    batched,
    distinct_first_tokens,
    first_token_clashes,
    last_token_logits,
)

CLOSED_THRESHOLD = 0.7
OPEN_THRESHOLD = 0.5


def answer_probs(
    model, tokenizer, facts: FactSet, prompts: list[str] | None = None, batch_size: int = 32, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(true answer) and P(edit target) for each fact at the end of its prompt (the training
    format unless ``prompts`` is given). Closed answer sets are normalised over the set; open
    ones over the full vocabulary, scoring an answer's first token."""
    prompts = prompts if prompts is not None else [f.prompt for f in facts]
    tokens = answer_tokens(tokenizer, facts)
    closed = tokens.answers is not None
    true_ids = tokens.true_column if closed else tokens.true
    new_ids = tokens.new_column if closed else tokens.new
    device = next(model.parameters()).device
    p_true, p_new = [], []
    with torch.no_grad():
        for rows in tqdm(list(batched(len(prompts), batch_size)), desc="scoring facts", disable=not progress):
            batch = encode(tokenizer, prompts[rows], device=device)
            probs = last_token_logits(model, batch, tokens.answers).softmax(-1).cpu()
            t, n = true_ids[rows], new_ids[rows]
            idx = torch.arange(len(t))
            p_true.append(probs[idx, t])
            p_new.append(torch.where(n >= 0, probs[idx, n.clamp(min=0)], torch.nan))
    return torch.cat(p_true), torch.cat(p_new)


class NoFactsKnownError(FactDataError):
    """None known: carries every fact's P(true) so that a caller can still show them."""

    def __init__(self, facts: FactSet, threshold: float, p_true: dict[str, float], notes: list[str] = ()):
        self.facts, self.threshold, self.p_true = facts, threshold, p_true
        best = max(p_true.values(), default=float("nan"))
        above = sum(p > threshold for p in p_true.values())
        if above:  # known, but every one of them dropped (the notes say why)
            message = f"the model knows {above} of the {len(facts)} facts at P(true) > {threshold}, but none is usable"
        else:
            message = (f"the model knows none of the {len(facts)} facts at P(true) > {threshold} (highest "
                       f"{best:.3f}); {FEW_KNOWN_REMEDY}")
        super().__init__("; ".join([message, *notes]))


FEW_KNOWN_REMEDY = ("a zero-shot prompt is the usual cause: start each prompt with one solved example of the relation "
                    "(as the built-in 'Fact: Tiger Woods plays the sport of golf' line does), or lower --threshold")


@dataclass
class KnownReport:
    known: FactSet
    threshold: float
    total: int
    p_true: dict[str, float]
    known_by_answer: dict[str, int]
    total_by_answer: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "threshold": self.threshold,
            "total": self.total,
            "known": len(self.known),
            "known_by_answer": self.known_by_answer,
            "total_by_answer": self.total_by_answer,
            "notes": self.notes,
        }


def filter_known(
    model, tokenizer, facts: FactSet, threshold: float | None = None, batch_size: int = 32, progress: bool = False
) -> KnownReport:
    """Keep the facts whose true answer the model gives with P > threshold (default 0.7 for
    closed answer sets, normalised over the relation's answers, e.g. the three sports without
    the edit-only " golf"; 0.5 over the full vocabulary for open ones)."""
    if facts.closed:
        distinct_first_tokens(tokenizer, facts.answers)
    threshold = threshold if threshold is not None else (CLOSED_THRESHOLD if facts.closed else OPEN_THRESHOLD)
    scored = replace(facts, answers=facts.relation_answers)
    p_true, _ = answer_probs(model, tokenizer, scored, batch_size=batch_size, progress=progress)
    notes = list(facts.notes)
    clash = set(first_token_clashes(tokenizer, facts))
    if clash:
        notes.append(f"{len(clash)} facts dropped: true answer and edit target share their first token, so an "
                     "edit cannot be scored (e.g. " + ", ".join(sorted(clash)[:3]) + ")")
    kept = [f for f, p in zip(facts, p_true.tolist(), strict=True) if p > threshold and f.id not in clash]
    multi = sum(len(tokenizer.encode(f.target_true, add_special_tokens=False)) > 1 for f in facts)
    if multi:
        notes.append(f"{multi} answers span several tokens: scored by their first token")
    if not kept:
        raise NoFactsKnownError(facts, threshold, {f.id: p for f, p in zip(facts, p_true.tolist(), strict=True)},
                                notes[len(facts.notes):])
    known = facts.subset(kept, f"{facts.name} (known)")
    return KnownReport(
        known=known,
        threshold=threshold,
        total=len(facts),
        p_true={f.id: p for f, p in zip(facts, p_true.tolist(), strict=True)},
        known_by_answer=known.count_by_answer(),
        total_by_answer=facts.count_by_answer(),
        notes=notes,
    )
