"""FLU against the compared methods, per setting and metric. The primary comparisons (declared by
the run's ``analysis`` config before it ran) reach one of four outcomes, decided by Holm's
correction over the setting's primary family: better or worse (the paired t-test rejects), equivalent
(both one-sided tests reject at +/- delta), or inconclusive, with the minimum detectable effect and
the seeds a decision would need. Every other comparison is secondary and descriptive."""

from __future__ import annotations

import math

from mechunlearn.report import budget
from mechunlearn.report.analysis import AnalysisSpec, fact_values, spread
from mechunlearn.report.methods import OURS, VARIANT, label, split_arm
from mechunlearn.report.metrics import METRICS, present
from mechunlearn.report.stats import holm, interval, mde, seeds_needed, t_test, tost_p
from mechunlearn.report.training import unreached_seeds

RULE = ("primary comparisons: Holm's step-down correction over the primary family of each setting at family-wise "
        "{alpha}, for the difference (two-sided paired t-test over seeds) and for equivalence within ±delta (two "
        "one-sided tests); secondary comparisons: raw 95% intervals, descriptive")


def decision_rule(spec: AnalysisSpec) -> str:
    return RULE.format(alpha=spec.alpha)


def _cells_by(cells: list[dict], setting: str, method: str) -> dict[int, dict]:
    return {c["seed"]: c for c in cells if c["setting"] == setting and c["method"] == method}


def _value(cell: dict, metric: str) -> float | None:
    v = cell["metrics"].get(metric)
    return v if isinstance(v, int | float) and math.isfinite(v) else None


def paired(ours: dict[int, dict], theirs: dict[int, dict], metric: str, sign: int):
    """Per seed: the difference of the two arms' metric (signed: positive = FLU better), and the
    per-fact differences on the facts both arms were evaluated on."""
    per_seed, per_fact = {}, {}
    for seed in sorted(set(ours) & set(theirs)):
        a, b = _value(ours[seed], metric), _value(theirs[seed], metric)
        if a is None or b is None:
            continue
        per_seed[seed] = sign * (a - b)
        fa, fb = fact_values(ours[seed], metric), fact_values(theirs[seed], metric)
        if fa and fb:
            per_fact[seed] = [sign * (fa[k] - fb[k]) for k in sorted(set(fa) & set(fb))]
    return per_seed, per_fact


def verdicts(cells: list[dict], spec: AnalysisSpec | None = None) -> list[dict]:
    spec = spec or AnalysisSpec()
    out = []
    unreached = unreached_seeds(cells)
    off_budget = budget.outside(cells)
    for setting, variant in _groups(cells):
        in_setting = [c for c in cells if c["setting"] == setting]
        metrics = present(in_setting)
        primary = spec.primary_metrics([m.name for m in metrics])
        against = spec.compared({c["method"] for c in in_setting}, variant)
        ours_name = OURS + (VARIANT + variant if variant else "")
        ours = _cells_by(cells, setting, ours_name)
        rows = []
        for metric in metrics:
            for theirs_name in against:
                per_seed, per_fact = paired(ours, _cells_by(cells, setting, theirs_name), metric.name,
                                            1 if metric.higher_is_better else -1)
                if per_seed:
                    rows.append(_row(setting, metric.name, ours_name, theirs_name, metric.name in primary, per_seed,
                                     per_fact, spec))
        family = [r for r in rows if r["primary"]]
        _decide(family, spec)
        for r in rows:
            short = {m: unreached[(setting, m)] for m in (ours_name, r["vs"]) if unreached.get((setting, m))}
            r["target_not_reached"] = short
            if short and r["primary"]:
                r["text"] += " Caution: " + "; ".join(
                    f"{label(m)} did not reach the training target in seed{'s' if len(s) > 1 else ''} "
                    f"{', '.join(map(str, s))}" for m, s in short.items()) + "."
            sizes = off_budget.get((setting, r["vs"]), [])
            r["budget_outside"] = {str(seed): gap for seed, gap in sizes}
            if sizes and r["primary"]:
                r["text"] += (f" Caution: {label(r['vs'])} trained a parameter count outside the budget tolerance ("
                              + "; ".join(f"seed {seed}: {gap:+.1%}" for seed, gap in sizes) + ").")
            out.append(r)
    return finish(out)


def _groups(cells: list[dict]) -> list[tuple[str, str]]:
    """(setting, FLU variant) pairs: the run's own FLU ("") and every variant it holds, each with
    its own primary family."""
    arms = {(c["setting"], split_arm(c["method"])) for c in cells}
    return sorted({(setting, variant) for setting, (method, variant) in arms if method == OURS})


def _row(setting: str, metric: str, ours: str, vs: str, primary: bool, per_seed: dict, per_fact: dict,
         spec: AnalysisSpec) -> dict:
    diffs = list(per_seed.values())
    mean, _, p = t_test(diffs)
    low, high = interval(diffs, 0.95)
    s = spread(per_fact, diffs)
    return {"setting": setting, "metric": metric, "ours": ours, "vs": vs, "rule": split_arm(ours)[1],
            "primary": primary, "advantage": mean,
            "n": len(diffs), "seeds": sorted(per_seed), "p": _finite(p), "low": _finite(low), "high": _finite(high),
            "confidence": 0.95, "delta": spec.delta_for(metric), "sd": _finite(s.total_sd),
            "fact_sd": None if s.fact_var is None else math.sqrt(s.fact_var),
            "seed_sd": None if s.seed_var is None else math.sqrt(s.seed_var),
            "facts_per_seed": s.n_facts, "_per_seed": diffs, "_spread": s,
            "significant_raw": bool(len(diffs) > 1 and p <= 0.05), "significant": False, "outcome": "descriptive",
            "text": ""}


def _decide(family: list[dict], spec: AnalysisSpec) -> None:
    """The four outcomes of the primary family, its corrected intervals, MDEs and seeds needed."""
    m = len(family)
    if not m:
        return
    level = spec.alpha / m  # Bonferroni: the simultaneous intervals and the planning level
    p_diff = holm([math.nan if r["p"] is None else r["p"] for r in family])
    p_equiv = holm([tost_p(r["_per_seed"], r["delta"]) for r in family])
    for r, pd_, pe in zip(family, p_diff, p_equiv, strict=True):
        diffs, s = r["_per_seed"], r["_spread"]
        r.update(comparisons=m, power=spec.power)
        if len(diffs) < 2:  # a lower bound: the fact-to-fact spread alone, as if seeds did not differ
            r["seeds_for_delta"] = None if s.fact_var is None else seeds_needed(
                math.sqrt(s.fact_var / s.n_facts), r["delta"], level, spec.power)
            r["text"] = _sentence(r)
            continue
        low, high = interval(diffs, 1 - level)
        r["equivalence_interval"] = list(interval(diffs, 1 - 2 * level))  # TOST at level: inside +/- delta
        r.update({"p_holm": pd_, "p_equivalence_holm": pe, "low": low, "high": high, "confidence": 1 - level,
                  "mde": mde(r["sd"], len(diffs), level, spec.power),
                  "seeds_for_delta": seeds_needed(r["sd"], r["delta"], level, spec.power)})
        if s.fact_var is not None:
            r["seeds_for_delta_at_64_facts"] = seeds_needed(s.sd_at(64), r["delta"], level, spec.power)
        if pd_ <= spec.alpha:
            r["outcome"] = "better" if r["advantage"] > 0 else "worse"
        elif pe <= spec.alpha:
            r["outcome"] = "equivalent"
        else:
            r["outcome"] = "inconclusive"
        r["significant"] = r["outcome"] in ("better", "worse")
        r["within_delta"] = r["significant"] and pe <= spec.alpha  # a real difference, smaller than delta
        r["text"] = _sentence(r)


def finish(rows: list[dict]) -> list[dict]:
    """The rows as JSON: the working values dropped, every number finite or null."""
    for r in rows:
        del r["_per_seed"], r["_spread"]
        r.setdefault("comparisons", sum(1 for x in rows if (x["setting"], x["rule"]) == (r["setting"], r["rule"])
                                        and x["primary"]))
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return rows


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _sentence(r: dict) -> str:
    name = METRICS[r["metric"]].label if r["metric"] in METRICS else r["metric"]
    ours, theirs = label(r["ours"]), label(r["vs"])
    seeds = f"{r['n']} seed{'s' if r['n'] != 1 else ''}"
    corrected = (f"{r['confidence']:.1%} simultaneous interval {r['low']:+.3f} to {r['high']:+.3f}, {seeds}, "
                 f"{r['comparisons']} primary comparison{'s' if r['comparisons'] != 1 else ''}") if r["n"] > 1 else seeds
    needed = r.get("seeds_for_delta")
    need = f"about {needed} seeds" if needed else "more than 10,000 seeds"
    if r["outcome"] in ("better", "worse"):
        which = "better than" if r["outcome"] == "better" else "worse than"
        text = f"{name}: {ours} {which} {theirs} by {abs(r['advantage']):.3f} ({corrected}; Holm p = {r['p_holm']:.2g})."
        if r["within_delta"]:
            text += (f" The difference is smaller than the ±{r['delta']:g} that matters: its {_equivalence_interval(r)} "
                     f"(equivalence Holm p = {r['p_equivalence_holm']:.2g}).")
        return text
    if r["outcome"] == "equivalent":
        return (f"{name}: {ours} and {theirs} equivalent within ±{r['delta']:g}: difference {r['advantage']:+.3f}, "
                f"its {_equivalence_interval(r)} ({seeds}, {r['comparisons']} primary "
                f"comparison{'s' if r['comparisons'] != 1 else ''}; equivalence Holm p = {r['p_equivalence_holm']:.2g}).")
    if r["outcome"] == "inconclusive":
        return (f"{name}: inconclusive between {ours} and {theirs}: difference {r['advantage']:+.3f} ({corrected}). "
                f"The smallest difference this run detects with {r['power']:.0%} power is {r['mde']:.3f}; {need} would "
                f"bring it to {r['delta']:g}.")
    return f"{name}: {ours} {'ahead of' if r['advantage'] > 0 else 'behind'} {theirs} by {abs(r['advantage']):.3f} ({seeds}, descriptive)."


def _equivalence_interval(r: dict) -> str:
    low, high = r["equivalence_interval"]
    return (f"{1 - 2 * (1 - r['confidence']):.1%} interval {low:+.3f} to {high:+.3f} lies inside "
            f"±{r['delta']:g}")


def one_seed_note(rows: list[dict]) -> str | None:
    """With one seed, the one sentence the report leads with instead of a verdict."""
    primary = [r for r in rows if r["primary"]]
    if not primary or any(r["n"] > 1 for r in primary):
        return None
    bounds = [r["seeds_for_delta"] for r in primary if r.get("seeds_for_delta")]
    need = (f"at least {max(bounds)} seeds (from the fact-to-fact spread of this seed alone; the seed-to-seed "
            "spread can only raise it)" if bounds else "seeds whose number only a pilot can tell")
    return (f"One seed: every comparison below is descriptive, not a verdict; deciding the {len(primary)} primary "
            f"comparisons at the smallest difference that matters would take {need}. Run a pilot of 3 or more seeds "
            "and `mechunlearn plan RUN_FOLDER` for the number.")
