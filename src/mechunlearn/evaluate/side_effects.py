"""Side effects of an edit: maintain facts in every format (and, separately, those of another
relation than the edited facts'), language-modelling loss on held-out general text, and
MMLU-style multiple choice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mechunlearn.evaluate.formats import FormatStyle
from mechunlearn.evaluate.lm_loss import lm_loss
from mechunlearn.evaluate.metrics import DEFAULT_FORMATS, FormatResults, evaluate_facts
from mechunlearn.evaluate.mmlu import mmlu_eval
from mechunlearn.facts import Split
from mechunlearn.models.loading import LoadedModel


def side_effects(
    lm: LoadedModel,
    split: Split,
    general_text: str | Path | None = None,
    mmlu_path: str | Path | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    seed: int = 0,
    mmlu_shots: int = 1,
    mmlu_limit: int | None = None,
    lm_windows: int | None = 16,
    lm_window_length: int = 64,
    batch_size: int = 16,
    progress: bool = False,
    style: FormatStyle | None = None,
    mmlu_per_subject: int | None = None,
) -> dict:
    """``{"maintain": FormatResults json (held-out maintain facts), "unrelated": the maintain facts
    of other relations than the edited ones, "lm_loss": {...} (on the evaluation part of
    ``general_text``, default the built-in text), "mmlu": {...} or None}``."""
    maintain = evaluate_facts(lm, split.maintain_test, formats, seed=seed, batch_size=batch_size, progress=progress,
                              style=style)
    return {
        "maintain": maintain.to_json(),
        "unrelated": unrelated_facts(split, maintain),
        "lm_loss": lm_loss(lm, general_text, lm_windows, lm_window_length, seed, progress=progress, part="eval"),
        "mmlu": mmlu_eval(lm, mmlu_path, mmlu_shots, mmlu_limit, seed, progress=progress,
                          per_subject=mmlu_per_subject) if mmlu_path else None,
    }


def unrelated_facts(split: Split, maintain: FormatResults) -> dict:
    """The held-out maintain facts whose relation is none of the edited facts' relations, read
    off the maintain results (the same scores, a subset of the rows). ``aggregates`` is None,
    with the reason in ``status``, when the facts carry no relation or no other one."""
    edited = sorted({f.relation for s in (split.forget, split.forget_eval) for f in s})
    present = sorted({f.relation for f in split.maintain_test})
    ids = {f.id for f in split.maintain_test if f.relation not in edited}
    out = {"edited_relations": edited, "relations": sorted(set(present) - set(edited)), "n_facts": len(ids),
           "aggregates": None}
    if edited == [""] and present == [""]:
        return {**out, "status": "the facts carry no relation"}
    if not ids:
        return {**out, "status": f"every held-out maintain fact has an edited relation ({', '.join(edited)}): "
                                 "no unrelated facts"}
    subset = FormatResults([r for r in maintain.rows if r.id in ids],
                           {fmt: [i for i in missed if i in ids] for fmt, missed in maintain.missing.items()},
                           maintain.formats, maintain.seed)
    return {**out, "status": "evaluated", "aggregates": subset.aggregates()}
