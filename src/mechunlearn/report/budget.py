"""Whether each compared arm trained the parameter count it was cut to. A cell cut to a budget (the
size of FLU's own selection, or ``localization.budget.params``) records the budget and the
tolerance (``localization.budget.tolerance``, default 0.1); an arm whose count (any block's, in a
sequential setting) misses its budget by more than the tolerance is flagged, at the top of the
report and in every verdict that involves it. Cells written before the record existed are checked
against their FLU cell of the same setting and seed at the default tolerance."""

from __future__ import annotations

import html

from mechunlearn.localize.budget import BUDGET_TOLERANCE
from mechunlearn.localize.catalog import COMPARED_ROLES
from mechunlearn.report.methods import BASE, OURS, label, split_arm, style


def _budget(cell: dict, flu: dict) -> tuple[int, float] | None:
    """(budget, tolerance) the cell's arm was cut to; None for an arm of its own size."""
    if "budget" in cell:
        record = cell["budget"]
        if not record or not record.get("params"):
            return None
        return int(record["params"]), float(record.get("tolerance", BUDGET_TOLERANCE))
    method, variant = split_arm(cell["method"])
    if style(method).role not in COMPARED_ROLES:
        return None
    budget = flu.get((cell["setting"], cell["seed"], variant))
    return (int(budget), BUDGET_TOLERANCE) if budget else None


def gaps(cells: list[dict]) -> list[dict]:
    """Every cell cut to a budget: its trained parameters, the budget, the relative gap (the
    largest over blocks) and whether it lies outside the tolerance."""
    flu = {(c["setting"], c["seed"], split_arm(c["method"])[1]): c.get("n_params") for c in cells
           if split_arm(c["method"])[0] == OURS}
    rows = []
    for c in cells:
        if c["method"] == BASE:
            continue
        cut = _budget(c, flu)
        if cut is None:
            continue
        budget, tolerance = cut
        blocks = (c.get("train") or {}).get("blocks") or [{"n_params": c.get("n_params")}]
        counts = [b["n_params"] for b in blocks if b.get("n_params") is not None]
        if not counts:
            continue
        worst = max(counts, key=lambda n: abs(n / budget - 1))
        gap = worst / budget - 1
        rows.append({"setting": c["setting"], "method": c["method"], "seed": c["seed"], "n_params": worst,
                     "budget": budget, "gap": gap, "tolerance": tolerance,
                     "outside": abs(gap) > tolerance + 1e-12})
    return rows


def outside(cells: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(setting, arm) -> [(seed, gap)] of the cells whose count lies outside the tolerance."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in gaps(cells):
        if r["outside"]:
            out.setdefault((r["setting"], r["method"]), []).append((r["seed"], r["gap"]))
    return {k: sorted(v) for k, v in out.items()}


def _size(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def section(cells: list[dict]) -> list[str]:
    """One line under "At a glance": every compared arm within the tolerance, or which are not."""
    rows = gaps(cells)
    if not rows:
        return []
    tolerances = "/".join(sorted({f"{r['tolerance']:.0%}" for r in rows}))
    bad = [r for r in rows if r["outside"]]
    if not bad:
        largest = max(rows, key=lambda r: abs(r["gap"]))
        text = (f"Budget: every compared arm trained within ±{tolerances} of the parameter count it was cut to "
                f"(FLU's); the largest gap is {largest['gap']:+.1%} ({label(largest['method'])}, "
                f"{largest['setting']}, seed {largest['seed']}).")
        return [f"<p class=note>{html.escape(text)}</p>"]
    listed = "; ".join(f"{label(r['method'])} ({r['setting']}, seed {r['seed']}): {_size(r['n_params'])} against "
                       f"{_size(r['budget'])} ({r['gap']:+.1%})" for r in bad)
    text = (f"Budget: {len(bad)} of {len(rows)} compared cells trained a parameter count outside the ±{tolerances} "
            f"tolerance of the budget they were cut to (FLU's parameter count, or localization.budget.params): {listed}. Their comparisons with FLU say "
            "so; the budget rule 'within' (localization.budget.rule) keeps every arm inside it.")
    return [f"<p class=lose>{html.escape(text)}</p>"]
