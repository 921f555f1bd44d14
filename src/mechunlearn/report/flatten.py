"""From one ``evaluate_run`` result to a report cell's ``metrics`` and ``curves``."""

from __future__ import annotations

from mechunlearn.report.metrics import METRICS

_EDIT_ONLY = ("edit.",)
_UNLEARN_ONLY = ("forget.train.err", "forget.qa.err", "forget.mcq.err", "forget.paraphrase.err")


def flatten(evaluated: dict, objective: str) -> dict[str, float | None]:
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


__all__ = ["METRICS", "curves", "flatten"]
