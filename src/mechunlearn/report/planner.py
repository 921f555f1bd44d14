"""How many seeds each primary comparison of a finished run (a pilot) needs: the minimum detectable
effect now, and the seeds that would bring it down to delta, at the run's facts per seed and at 64.
A pilot's spread is itself an estimate, so the planner also counts the seeds at its upper 80%
confidence limit: enough with probability 0.8 over pilots, where the estimate is enough about half
the time."""

from __future__ import annotations

import statistics
from pathlib import Path

from mechunlearn.report.analysis import AnalysisSpec
from mechunlearn.report.html import load_cells
from mechunlearn.report.methods import BASE, label
from mechunlearn.report.stats import sd_upper, seeds_needed
from mechunlearn.report.verdicts import verdicts

CONFIDENCE = 0.8  # in the pilot's spread


def plan(run_dir: str | Path, spec: AnalysisSpec | None = None) -> dict:
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    spec = spec or AnalysisSpec.of_run(run_dir)
    rows = [v for v in verdicts(cells, spec) if v["primary"]]
    for r in rows:
        if r.get("sd") is not None and r["n"] >= 2:
            r["seeds_for_delta_confident"] = seeds_needed(sd_upper(r["sd"], r["n"], CONFIDENCE), r["delta"],
                                                          1 - r["confidence"], spec.power)
    settings = {}
    for setting in sorted({r["setting"] for r in rows}):
        here = [r for r in rows if r["setting"] == setting]
        needed = [r["seeds_for_delta"] for r in here]
        in_setting = [c for c in cells if c["setting"] == setting and c["method"] != BASE and c.get("seconds")]
        settings[setting] = {
            "seeds so far": max(r["n"] for r in here),
            "seeds for every MDE <= delta": None if None in needed else max(needed),
            "seeds with confidence in the spread": _most([r.get("seeds_for_delta_confident") for r in here]),
            "seeds at 64 facts": _most([r.get("seeds_for_delta_at_64_facts") for r in here]),
            "arms per seed": len({c["method"] for c in in_setting}) or None,
            "seconds per trained cell": statistics.median(c["seconds"] for c in in_setting) if in_setting else None,
        }
    return {"rows": rows, "settings": settings, "spec": spec}


def _most(values: list[int | None]) -> int | None:
    return None if not values or None in values else max(values)


def lines(planned: dict) -> list[str]:
    spec: AnalysisSpec = planned["spec"]
    out = [f"Primary comparisons: {spec.describe()}; power {spec.power:.0%}, family-wise alpha {spec.alpha:g} "
           "(planned at alpha / family size, Holm's first step)."]
    for setting, s in planned["settings"].items():
        total = s["seeds for every MDE <= delta"]
        cost = ""
        if total and s["seconds per trained cell"] and s["arms per seed"]:
            hours = total * s["arms per seed"] * s["seconds per trained cell"] / 3600
            cost = f" (about {hours:.1f} h of trained cells at this run's median cell time)"
        confident = s["seeds with confidence in the spread"]
        sure = (f"; {confident} seeds reach it with {CONFIDENCE:.0%} confidence in this pilot's spread"
                if confident else "")
        out.append(f"{setting}: {s['seeds so far']} seed(s) so far; every primary MDE reaches delta at "
                   f"{total or 'more than 10,000 or unknown'} seeds{cost}{sure}; with 64 facts per seed: "
                   f"{s['seeds at 64 facts'] or 'unknown (needs per-fact rows for every endpoint)'}, if the per-fact "
                   "spread stays as it is here (a 64-fact pilot checks it; docs/analysis.md).")
        for r in [r for r in planned["rows"] if r["setting"] == setting]:
            mde = "–" if r.get("mde") is None else f"{r['mde']:.3f}"
            split = ("" if r.get("fact_sd") is None or r.get("seed_sd") is None
                     else f", seed sd {r['seed_sd']:.3f} + fact sd {r['fact_sd']:.3f}/sqrt({r['facts_per_seed']:.0f})")
            at64 = r.get("seeds_for_delta_at_64_facts")
            out.append(f"  {r['metric']} vs {label(r['vs'])}: {r['n']} seeds, sd of the difference "
                       f"{'–' if r.get('sd') is None else format(r['sd'], '.3f')}{split}; MDE {mde} (delta "
                       f"{r['delta']:g}); seeds for delta: {r.get('seeds_for_delta') or '–'}"
                       + (f" ({at64} at 64 facts)" if at64 else "")
                       + (f"; {r['seeds_for_delta_confident']} with {CONFIDENCE:.0%} confidence in the spread"
                          if r.get("seeds_for_delta_confident") else ""))
    return out
