"""The numbers an evaluation reports, declared once where they are computed: each headline
metric's name, label and direction (read by the report), the flat values of one
``evaluate_run`` result, the ones that judge an edit or an unlearning, and the curves. Each
attack declares its own in its registry entry (``attacks/registry.py``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.evaluate.metric import Metric

_BEFORE_ATTACKS = [
    Metric("edit.train.p_new", "P(edit target), training prompt", True, False),
    Metric("edit.qa.p_new", "P(edit target), question/answer prompt", True, True),
    Metric("edit.mcq.p_new", "P(edit target), multiple choice", True, True),
    Metric("edit.paraphrase.p_new", "P(edit target), paraphrases", True, True),
    Metric("forget.train.err", "1 - P(true), training prompt", True, False),
    Metric("forget.qa.err", "1 - P(true), question/answer prompt", True, True),
    Metric("forget.mcq.err", "1 - P(true), multiple choice", True, True),
    Metric("forget.paraphrase.err", "1 - P(true), paraphrases", True, True),
]
_AFTER_ATTACKS = [
    Metric("maintain.train.p_true", "maintain facts P(true), training prompt", True, False),
    Metric("maintain.mcq.p_true", "maintain facts P(true), multiple choice", True, False),
    Metric("unrelated.train.p_true", "unrelated facts (other relations) P(true), training prompt", True, False),
    Metric("neighborhood.p_true", "neighbourhood prompts P(true)", True, False),
    Metric("lm_loss", "language-modelling loss on held-out general text", False, False),
    Metric("mmlu.acc", "MMLU-style accuracy", True, False),
]


class _Metrics(Mapping[str, Metric]):
    """Every headline metric by name, in the report's order: the edit and forget metrics, the
    registered attacks' (read from ``ATTACKS`` at each use), then the side effects."""

    def _all(self) -> dict[str, Metric]:
        attacks = [m for attack in ATTACKS.values() for m in attack.metrics]
        return {m.name: m for m in [*_BEFORE_ATTACKS, *attacks, *_AFTER_ATTACKS]}

    def __getitem__(self, name: str) -> Metric:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


METRICS: Mapping[str, Metric] = _Metrics()


def headline(forget: dict, side_effects: dict, attacks: dict) -> dict[str, float | None]:
    """The flat numbers of one evaluation (``evaluate_run``) from its parts (the ``METRICS`` above
    among them)."""
    out: dict[str, float | None] = {}
    for set_name, res in (("forget", forget), ("maintain", side_effects["maintain"])):
        for fmt, agg in res["aggregates"].items():
            for key in ("p_true", "p_new", "accuracy", "edit_accuracy", "n", "n_missing"):
                out[f"{set_name}.{fmt}.{key}"] = agg[key]
            if set_name == "forget":
                out[f"edit.{fmt}.p_new"] = agg["p_new"]
                out[f"forget.{fmt}.err"] = None if agg["p_true"] is None else 1 - agg["p_true"]
    if "neighborhood" in forget["aggregates"]:
        out["neighborhood.p_true"] = forget["aggregates"]["neighborhood"]["p_true"]
    se = side_effects
    for fmt, agg in ((se.get("unrelated") or {}).get("aggregates") or {}).items():
        for key in ("p_true", "accuracy", "n"):
            out[f"unrelated.{fmt}.{key}"] = agg[key]
    out["lm_loss"] = se["lm_loss"]["loss"]
    out["perplexity"] = se["lm_loss"]["perplexity"]
    if se.get("mmlu"):
        out["mmlu.acc"] = se["mmlu"]["accuracy"]
        out["mmlu.p_correct"] = se["mmlu"]["p_correct"]
        out["mmlu.chance"] = se["mmlu"]["chance"]
        if "p_above_chance" in se["mmlu"]:  # a one-sided binomial test; at chance: not above it at 0.05
            out["mmlu.p_above_chance"] = se["mmlu"]["p_above_chance"]
            out["mmlu.at_chance"] = float(se["mmlu"]["at_chance"])
    for name, attack in ATTACKS.items():
        if name in attacks:
            out.update(attack.headline(attacks[name]))
    return out


_EDIT_ONLY = ("edit.",)
_UNLEARN_ONLY = ("forget.train.err", "forget.qa.err", "forget.mcq.err", "forget.paraphrase.err")


def for_objective(aggregates: dict[str, float | None], objective: str) -> dict[str, float | None]:
    """Every flat aggregate; the edit metrics only for edits and the 1 - P(true) metrics only
    for unlearning, so each setting shows the numbers that judge it."""
    editing = objective == "edit"
    out = {}
    for name, value in aggregates.items():
        if name.startswith(_EDIT_ONLY) and not editing:
            continue
        if name in _UNLEARN_ONLY and editing:
            continue
        out[name] = value
    return out


def curves(attacks: dict[str, dict]) -> dict[str, list[list[float]]]:
    """Each attack's named (x, y) curves from its result."""
    out = {}
    for name, attack in ATTACKS.items():
        if name in attacks:
            out.update(attack.curves(attacks[name]))
    return out
