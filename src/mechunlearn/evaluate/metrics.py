"""P(true), P(edit target) and argmax accuracy of a model on a fact set, in any prompt format.

Probabilities are read at each prompt's last token from the first token of each answer:
normalised over the candidates for closed sets (sports answers, MCQ letters), over the full
vocabulary otherwise. Option-likelihood MCQ items score each option's whole text (summed or
per-token mean log-probability), normalised over the options. A fact with several prompts
(paraphrases, neighbours) gets the mean. A batch's common prefix runs once, and each prompt
once for all of its options (``models.prefix``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechunlearn.errors import FactDataError
from mechunlearn.evaluate.config import DEFAULT_FORMATS
from mechunlearn.evaluate.formats import FormatItem, FormatStyle, build_format
from mechunlearn.facts import FactSet
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import (
    answer_token_id,
    batched,
    continuation_logprobs,
    distinct_first_tokens,
    unembed,
)


@dataclass(frozen=True)
class PromptScore:
    p_true: float
    p_new: float  # nan when there is no edit target
    correct: bool  # the argmax is the true answer
    edited: bool  # the argmax is the edit target


@dataclass(frozen=True)
class FactRow:
    id: str
    format: str
    p_true: float
    p_new: float | None
    correct: float  # argmax accuracy (a fraction when the fact has several prompts)
    edited: float | None  # how often the argmax is the edit target
    n_prompts: int
    options: tuple[str, ...] = ()  # MCQ option order shown (A, B, ...)


@dataclass
class FormatResults:
    rows: list[FactRow]
    missing: dict[str, list[str]]  # format -> ids of facts it could not ask
    formats: tuple[str, ...]
    seed: int
    notes: list[str] = field(default_factory=list)

    def aggregates(self) -> dict[str, dict]:
        out = {}
        for fmt in self.formats:
            rows = [r for r in self.rows if r.format == fmt]
            out[fmt] = {
                "n": len(rows),
                "n_missing": len(self.missing.get(fmt, [])),
                "p_true": _mean([r.p_true for r in rows]),
                "p_new": _mean([r.p_new for r in rows]),
                "accuracy": _mean([r.correct for r in rows]),
                "edit_accuracy": _mean([r.edited for r in rows]),
            }
        return out

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([_row_dict(r) for r in self.rows])

    def to_json(self) -> dict:
        return {
            "formats": list(self.formats),
            "seed": self.seed,
            "aggregates": self.aggregates(),
            "missing": self.missing,
            "notes": self.notes,
            "rows": [_row_dict(r) for r in self.rows],
        }


def _row_dict(row: FactRow) -> dict:
    d = asdict(row)
    d["options"] = " | ".join(row.options)
    return d


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(vals) / len(vals)) if vals else None


def score_items(lm: LoadedModel, items: list[FormatItem], batch_size: int = 16, progress: bool = False,
                desc: str = "scoring") -> list[list[PromptScore]]:
    """Score every prompt of every item; returns one list of scores per item."""
    whole = [i for i, item in enumerate(items) if item.scoring != "first_token"]
    first = [i for i, item in enumerate(items) if item.scoring == "first_token"]
    scores: list[list[PromptScore]] = [[] for _ in items]
    for group, scorer in ((first, _score_first_tokens), (whole, _score_continuations)):
        if group:
            for i, s in zip(group, scorer(lm, [items[i] for i in group], batch_size, progress, desc), strict=True):
                scores[i] = s
    return scores


def _score_continuations(lm: LoadedModel, items: list[FormatItem], batch_size: int, progress: bool,
                         desc: str) -> list[list[PromptScore]]:
    """Whole-text scoring: log p(candidate | prompt), summed or per-token mean, softmax over the candidates."""
    for item in items:
        if not item.candidates or item.true_answer not in item.candidates:
            raise FactDataError(f"{item.fact_id!r}: whole-answer scoring needs candidates that include the true answer")
    pairs = [(i, p, c) for i, item in enumerate(items) for p in item.prompts for c in item.candidates]
    total, count = torch.empty(len(pairs)), torch.empty(len(pairs))
    with torch.no_grad():
        for rows in tqdm(list(batched(len(pairs), batch_size)), desc=desc, disable=not progress, leave=False):
            chunk = pairs[rows]
            total[rows], count[rows] = continuation_logprobs(
                lm.model, lm.tokenizer, [p for _, p, _ in chunk], [c for _, _, c in chunk], lm.device)
    scores: list[list[PromptScore]] = [[] for _ in items]
    at = 0
    for i, item in enumerate(items):
        k = len(item.candidates)
        for _ in item.prompts:
            value = total[at:at + k] / (count[at:at + k] if item.scoring == "mean" else 1)
            logp = value.log_softmax(-1)
            new = item.candidates.index(item.new_answer) if item.new_answer in item.candidates else None
            scores[i].append(_read(logp, None, item.candidates.index(item.true_answer), new))
            at += k
    return scores


def _score_first_tokens(lm: LoadedModel, items: list[FormatItem], batch_size: int, progress: bool,
                        desc: str) -> list[list[PromptScore]]:
    tok = lm.tokenizer
    flat = [(i, p) for i, item in enumerate(items) for p in item.prompts]
    if not flat:
        return [[] for _ in items]
    cand_ids = {}
    for item in items:
        if item.candidates is not None and item.candidates not in cand_ids:
            cand_ids[item.candidates] = distinct_first_tokens(tok, item.candidates, "candidate answer")
    true_ids = [answer_token_id(tok, it.true_answer, f"answer of {it.fact_id!r}") for it in items]
    new_ids = [answer_token_id(tok, it.new_answer, f"edit target of {it.fact_id!r}") if it.new_answer else None
               for it in items]
    scores: list[list[PromptScore]] = [[] for _ in items]
    with torch.no_grad():
        for rows in tqdm(list(batched(len(flat), batch_size)), desc=desc, disable=not progress, leave=False):
            owners = [flat[k][0] for k in range(rows.start, rows.stop)]
            batch = encode(tok, [flat[k][1] for k in range(rows.start, rows.stop)], device=lm.device)
            hidden = final_hidden_shared(lm.model, batch)
            closed = [items[o].candidates is not None for o in owners]
            full = unembed(lm.model, hidden).float().log_softmax(-1) if not all(closed) else None
            for r, o in enumerate(owners):
                item = items[o]
                if item.candidates is None:
                    logp = full[r]
                    ids = None
                else:
                    ids = cand_ids[item.candidates]
                    logp = unembed(lm.model, hidden[r:r + 1], ids).float()[0].log_softmax(-1)
                scores[o].append(_read(logp, ids, true_ids[o], new_ids[o]))
    return scores


def _read(logp: torch.Tensor, candidate_ids: list[int] | None, true_id: int, new_id: int | None) -> PromptScore:
    def column(token):
        return token if candidate_ids is None else candidate_ids.index(token)

    probs = logp.exp()
    top = int(logp.argmax())
    t = column(true_id)
    n = column(new_id) if new_id is not None else None
    return PromptScore(
        p_true=float(probs[t]),
        p_new=float(probs[n]) if n is not None else math.nan,
        correct=top == t,
        edited=n is not None and top == n,
    )


def evaluate_facts(lm: LoadedModel, facts: FactSet, formats: Sequence[str] = DEFAULT_FORMATS, seed: int = 0,
                   batch_size: int = 16, progress: bool = False, style: FormatStyle | None = None) -> FormatResults:
    """Per-fact P(true), P(edit target) and argmax accuracy in each format (see
    ``evaluate.formats``; ``style`` picks the QA template and MCQ variant), with the facts each
    format could not ask listed as missing."""
    formats = tuple(dict.fromkeys(formats))
    rows, missing, notes = [], {}, []
    for fmt in formats:
        built = build_format(facts, fmt, seed, style)
        missing[fmt] = built.missing
        if built.missing:
            notes.append(f"{fmt}: {len(built.missing)} of {len(facts)} facts cannot be asked in this format")
        scores = score_items(lm, built.items, batch_size, progress, desc=f"{fmt} ({facts.name})")
        for item, s in zip(built.items, scores, strict=True):
            has_new = item.new_answer is not None
            rows.append(FactRow(
                id=item.fact_id,
                format=fmt,
                p_true=_mean([x.p_true for x in s]),
                p_new=_mean([x.p_new for x in s]) if has_new else None,
                correct=_mean([float(x.correct) for x in s]),
                edited=_mean([float(x.edited) for x in s]) if has_new else None,
                n_prompts=len(s),
                options=item.options,
            ))
    return FormatResults(rows, missing, formats, seed, notes)
