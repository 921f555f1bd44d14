"""The report's metrics: each cell of a run carries a flat ``{metric: value}`` dict with these
names. Every metric is oriented so the report can say which method did better."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    robustness: bool  # an "other format / attack" metric, where the paper's claim shows


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("edit.train.p_new", "P(edit target), training prompt", True, False),
        Metric("edit.qa.p_new", "P(edit target), question/answer prompt", True, True),
        Metric("edit.mcq.p_new", "P(edit target), multiple choice", True, True),
        Metric("edit.paraphrase.p_new", "P(edit target), paraphrases", True, True),
        Metric("forget.train.err", "1 - P(true), training prompt", True, False),
        Metric("forget.qa.err", "1 - P(true), question/answer prompt", True, True),
        Metric("forget.mcq.err", "1 - P(true), multiple choice", True, True),
        Metric("forget.paraphrase.err", "1 - P(true), paraphrases", True, True),
        Metric("relearn.error", "relearning error, 1 - P(true) after relearning", True, True),
        Metric("probe.truth", "probe reads the true answer (mean over the upper half of the layers)", False, True),
        Metric("probe.target", "probe reads the edit target (mean over the upper half of the layers)", True, True),
        Metric("softprompt.error", "1 - P(true) under a soft-prompt attack", True, True),
        Metric("maintain.train.p_true", "maintain facts P(true), training prompt", True, False),
        Metric("maintain.mcq.p_true", "maintain facts P(true), multiple choice", True, False),
        Metric("unrelated.train.p_true", "unrelated facts (other relations) P(true), training prompt", True, False),
        Metric("neighborhood.p_true", "neighbourhood prompts P(true)", True, False),
        Metric("lm_loss", "language-modelling loss on held-out general text", False, False),
        Metric("mmlu.acc", "MMLU-style accuracy", True, False),
    ]
}


def present(cells: list[dict]) -> list[Metric]:
    """The registered metrics that at least one cell reports, in registry order."""
    seen = {k for c in cells for k, v in c.get("metrics", {}).items() if v is not None}
    return [m for name, m in METRICS.items() if name in seen]
