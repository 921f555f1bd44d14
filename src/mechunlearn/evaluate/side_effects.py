"""Side effects of an edit: maintain facts in every format, language-modelling loss on
general text, and MMLU-style multiple choice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mechunlearn.evaluate.formats import FormatStyle
from mechunlearn.evaluate.lm_loss import lm_loss
from mechunlearn.evaluate.metrics import DEFAULT_FORMATS, evaluate_facts
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
    lm_windows: int = 16,
    lm_window_length: int = 64,
    batch_size: int = 16,
    progress: bool = False,
    style: FormatStyle | None = None,
) -> dict:
    """``{"maintain": FormatResults json (held-out maintain facts), "lm_loss": {...},
    "mmlu": {...} or None}``. The LM loss uses ``general_text`` (default: the built-in text)."""
    maintain = evaluate_facts(lm, split.maintain_test, formats, seed=seed, batch_size=batch_size, progress=progress,
                              style=style)
    return {
        "maintain": maintain.to_json(),
        "lm_loss": lm_loss(lm, general_text, lm_windows, lm_window_length, seed, progress=progress),
        "mmlu": mmlu_eval(lm, mmlu_path, mmlu_shots, mmlu_limit, seed, progress=progress) if mmlu_path else None,
    }
