"""FLU against each output-tracing method, per setting and metric, with Holm's correction over
every comparison of the setting: the tables keep the raw intervals, the sentences the corrected
decisions."""

from __future__ import annotations

import math

from mechunlearn.report.methods import OURS, OUTPUT_TRACING, label
from mechunlearn.report.metrics import present
from mechunlearn.report.stats import compare, holm, paired_p, verdict
from mechunlearn.report.training import unreached_seeds

ALPHA = 0.05
RULE = (f"Holm's step-down correction over all FLU-vs-output-tracing comparisons of a setting (methods x metrics), "
        f"family-wise error {ALPHA}; each comparison is a two-sided paired t-test over seeds")


def _by_seed(cells: list[dict], setting: str, method: str, metric: str) -> dict[int, float]:
    return {c["seed"]: c["metrics"][metric] for c in cells
            if c["setting"] == setting and c["method"] == method and c["metrics"].get(metric) is not None}


def verdicts(cells: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Per setting and metric: did FLU beat each output-tracing method? ``significant_raw`` is the
    uncorrected interval's decision, ``significant`` Holm's over the setting's ``comparisons``."""
    out = []
    methods = {c["method"] for c in cells}
    unreached = unreached_seeds(cells)
    for setting in sorted({c["setting"] for c in cells}):
        family = []
        for metric in present([c for c in cells if c["setting"] == setting]):
            ours = _by_seed(cells, setting, OURS, metric.name)
            for theirs_name in [m for m in OUTPUT_TRACING if m in methods]:
                theirs = _by_seed(cells, setting, theirs_name, metric.name)
                if ours and theirs and set(ours) & set(theirs):
                    family.append((metric, theirs_name, compare(ours, theirs, metric.higher_is_better),
                                   paired_p(ours, theirs)))
        adjusted = holm([p for *_, p in family])
        for (metric, theirs_name, diff, p), p_holm in zip(family, adjusted, strict=True):
            tested = diff.n > 1
            text = verdict(diff, label(OURS), label(theirs_name), metric.label,
                           p_holm=p_holm if tested else None, comparisons=len(family), alpha=alpha)
            short_arms = {m: unreached[(setting, m)] for m in (OURS, theirs_name) if unreached.get((setting, m))}
            if short_arms:
                text += " Caution: " + "; ".join(
                    f"{label(m)} did not reach the training target in seed{'s' if len(s) > 1 else ''} "
                    f"{', '.join(map(str, s))}" for m, s in short_arms.items()) + "."
            out.append({"setting": setting, "metric": metric.name, "vs": theirs_name, "advantage": diff.mean,
                        "low": diff.low, "high": diff.high, "n": diff.n,
                        "p": None if math.isnan(p) else p, "p_holm": p_holm if tested else None,
                        "comparisons": len(family), "significant_raw": bool(tested and (diff.low > 0 or diff.high < 0)),
                        "significant": bool(tested and p_holm <= alpha),
                        "target_not_reached": {m: s for m, s in short_arms.items()}, "text": text})
    return out
