"""The numbers an evaluation reports, declared once where they are computed: each headline
metric's name, label and direction (read by the report), the flat values of one
``evaluate_run`` result, the ones that judge an edit or an unlearning, and the curves."""

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


def headline(result: dict) -> dict[str, float | None]:
    """The flat numbers of one ``evaluate_run`` result (the ``METRICS`` above among them)."""
    out: dict[str, float | None] = {}
    for set_name, res in (("forget", result["forget"]), ("maintain", result["side_effects"]["maintain"])):
        for fmt, agg in res["aggregates"].items():
            for key in ("p_true", "p_new", "accuracy", "edit_accuracy", "n", "n_missing"):
                out[f"{set_name}.{fmt}.{key}"] = agg[key]
            if set_name == "forget":
                out[f"edit.{fmt}.p_new"] = agg["p_new"]
                out[f"forget.{fmt}.err"] = None if agg["p_true"] is None else 1 - agg["p_true"]
    if "neighborhood" in result["forget"]["aggregates"]:
        out["neighborhood.p_true"] = result["forget"]["aggregates"]["neighborhood"]["p_true"]
    se = result["side_effects"]
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
    attacks = result["attacks"]
    if "relearn" in attacks:
        out["relearn.p_true_before"] = attacks["relearn"]["p_true_before"]
        out["relearn.p_true_after"] = attacks["relearn"]["p_true_after"]
        out["relearn.error"] = attacks["relearn"]["relearning_error"]
    if "probe" in attacks:
        p = attacks["probe"]
        out["probe.truth"] = p["reads_true"]
        out["probe.target"] = p["reads_target"]
        out["probe.truth_best_layer"] = p["reads_true_best"]
        out["probe.target_best_layer"] = p["reads_target_best"]
        out["probe.best_layer_accuracy"] = max((r["accuracy"] for r in p["layers"]), default=None)  # none: skipped
    if "softprompt" in attacks:
        s = attacks["softprompt"]
        for i, (fmt, value) in enumerate(s["p_true_after"].items()):
            prefix = "softprompt" if i == 0 else f"softprompt.{fmt}"
            out[f"{prefix}.p_true_before"] = s["p_true_before"][fmt]
            out[f"{prefix}.p_true_after"] = value
            out[f"{prefix}.p_true_random"] = s["p_true_random"][fmt]
            out[f"{prefix}.error"] = None if value is None else 1 - value
    return out


_EDIT_ONLY = ("edit.",)
_UNLEARN_ONLY = ("forget.train.err", "forget.qa.err", "forget.mcq.err", "forget.paraphrase.err")


def for_objective(evaluated: dict, objective: str) -> dict[str, float | None]:
    """Every flat aggregate; the edit metrics only for edits and the 1 - P(true) metrics only
    for unlearning, so each setting shows the numbers that judge it."""
    editing = objective == "edit"
    out = {}
    for name, value in evaluated["aggregates"].items():
        if name.startswith(_EDIT_ONLY) and not editing:
            continue
        if name in _UNLEARN_ONLY and editing:
            continue
        out[name] = value
    return out


def curves(evaluated: dict) -> dict[str, list[list[float]]]:
    attacks = evaluated.get("attacks", {})
    out = {}
    if "relearn" in attacks:
        out["relearn"] = [[p["step"], p["p_true"]] for p in attacks["relearn"]["curve"] if p.get("p_true") is not None]
    if "probe" in attacks:
        layers = attacks["probe"]["layers"]
        out["probe_truth"] = [[r["layer"], r["reads_true"]] for r in layers if r.get("reads_true") is not None]
        out["probe_target"] = [[r["layer"], r["reads_target"]] for r in layers if r.get("reads_target") is not None]
    return out
