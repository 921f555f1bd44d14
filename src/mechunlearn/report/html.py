"""A self-contained HTML report (plots embedded) and results.csv for one run folder.

Run folder layout (written by ``experiment.py``): ``config.json``, ``data.json``,
``cells/*.json`` (one per setting x method x seed, and the unedited model as method
``unedited``), ``localizations/*.json`` with their ``*.png`` plots.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.io import read_json, write_text_atomic
from mechunlearn.report import budget, plots, sections
from mechunlearn.report.analysis import AnalysisSpec
from mechunlearn.report.methods import BASE, OURS, label, ordered
from mechunlearn.report.metrics import present
from mechunlearn.report.stats import estimate
from mechunlearn.report.verdicts import decision_rule, verdicts

__all__ = ["OURS", "load_cells", "results_table", "verdicts", "write_report"]


CELL_KEYS = ("setting", "method", "seed", "metrics", "n_params")


def read_cell(path: Path) -> dict:
    """One cell of a run folder; an unreadable or incomplete one is named."""
    try:
        cell = read_json(path)
    except (OSError, ValueError) as e:
        raise MechunlearnError(f"cell {path} cannot be read ({e}); rerun the run to compute it again") from None
    if not isinstance(cell, dict) or not all(k in cell for k in CELL_KEYS):
        raise MechunlearnError(f"cell {path} lacks the keys of a cell {list(CELL_KEYS)}; rerun the run to compute it "
                               "again")
    return cell


def load_cells(run_dir: Path) -> list[dict]:
    cells = [read_cell(p) for p in sorted((run_dir / "cells").glob("*.json"))]
    if not cells:
        raise MechunlearnError(f"{run_dir} holds no finished cells yet (cells/ is empty)")
    return cells


def results_table(cells: list[dict]) -> pd.DataFrame:
    rows = [{"setting": c["setting"], "method": c["method"], "seed": c["seed"], "n_params": c.get("n_params"),
             **c["metrics"]} for c in cells]
    return pd.DataFrame(rows).sort_values(["setting", "method", "seed"]).reset_index(drop=True)


def _fmt(e) -> str:
    if math.isnan(e.mean):
        return "–"
    return f"{e.mean:.3f}" if e.n < 2 else f"{e.mean:.3f} ± {e.half_width:.3f}"


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.t{border-collapse:collapse;font-size:.85em;margin:.5em 0}table.t td,table.t th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right}
table.t th{background:#f4f4f4}img{max-width:100%;margin:.5em 0}.scroll{overflow-x:auto;max-width:100%}pre{white-space:pre-wrap;overflow-wrap:anywhere}.note{color:#555;font-size:.9em}
.win{color:#070}.lose{color:#a00}.tie{color:#555}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:min(540px,100%)}"""


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)  # a folder that is not a run is refused before anything is written
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    data = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    spec = AnalysisSpec.of_run(run_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = results_table(cells)
    write_text_atomic(run_dir / "results.csv", table.to_csv(index=False))
    found = verdicts(cells, spec)
    write_text_atomic(run_dir / "verdicts.json", json.dumps(found, indent=1, allow_nan=False))

    settings = sorted({c["setting"] for c in cells})
    methods = [m for m in ordered({c["method"] for c in cells}) if m != BASE]
    seeds = sorted({c["seed"] for c in cells})
    parts = [f"<h1>mechunlearn report: {html.escape(str(config.get('model', '')))}</h1>",
             f"<p class=note>{len(settings)} setting(s) × {len(methods)} method(s) × {len(seeds)} seed(s) "
             f"({', '.join(map(str, seeds))}). Intervals are 95% t-intervals over seeds; with one seed there is none. "
             f"Verdicts: {html.escape(decision_rule(spec))}. "
             "Probabilities, not argmax: closed answer sets are normalised over the answer set.</p>"]
    parts += sections.at_a_glance(cells, found, spec)
    parts += budget.section(cells)  # an arm outside the budget tolerance, flagged at the top
    parts += _non_finite(cells)
    parts += sections.comparison(found, cells, spec)
    parts += sections.fairness(cells, settings)
    parts += _data(data, cells, settings)
    parts += sections.mmlu_at_chance(cells)
    parts += _per_setting(cells, settings, methods, out_dir)

    parts.append("<h2>Each metric across settings</h2><div class=grid>")
    for metric in present(cells):
        parts.append(sections.img(plots.bars(cells, settings, methods, metric, out_dir / f"bars_{metric.name}.png")))
    parts.append("</div>")
    parts += _localizations(run_dir / "localizations")
    parts.append("<h2>All cells</h2>" + sections.table(table))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=1)) + "</pre>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>mechunlearn report</title><style>{CSS}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    return write_text_atomic(run_dir / "report.html", page)


def _non_finite(cells: list[dict]) -> list[str]:
    """Cells with a NaN or infinite metric (a diverged arm): named, and left out of every comparison."""
    bad = [f"{c['setting']} · {label(c['method'])} · seed {c['seed']}: {', '.join(sorted(names))}" for c in cells
           for names in [[k for k, v in c["metrics"].items() if isinstance(v, float) and not math.isfinite(v)]] if names]
    if not bad:
        return []
    return [f"<p class=lose>{len(bad)} cell(s) hold non-finite metrics (NaN or infinite), left out of every "
            f"comparison: {html.escape('; '.join(bad))}.</p>"]


def _data(data: dict, cells: list[dict], settings: list[str]) -> list[str]:
    parts = ["<h2>Data</h2>"]
    for key, known in data.items():
        if not key.startswith("known"):
            continue
        scope = "" if key == "known" else f"Setting {key.removeprefix('known_')}: "
        source = known.get("data") or f"built-in {known.get('dataset', '')}".strip()
        per_answer = (" (per answer: " + ", ".join(f"{a} {n}" for a, n in known["known_by_answer"].items()) + ")"
                      if known.get("known_by_answer") else "")
        parts.append("<p>" + html.escape(f"{scope}{known.get('known')} of {known.get('total')} facts ({source}) known "
                                         f"by the model at P(true) > {known.get('threshold')}{per_answer}. "
                                         + " ".join(known.get("notes", []))) + "</p>")
    for name, reason in (data.get("skipped") or {}).items():
        parts.append(f"<p class=lose>Setting {html.escape(name)} was skipped: {html.escape(reason)}</p>")
    for name, formats in (data.get("skipped_formats") or {}).items():  # one line: what the facts lack
        needs = "; ".join(f"{fmt} needs {need}" for fmt, need in formats.items())
        line = f"Setting {name}: formats {', '.join(formats)} skipped: no fact can be asked in them ({needs})."
        parts.append(f"<p class=lose>{html.escape(line)}</p>")
    if data.get("splits"):
        parts.append(sections.table(pd.DataFrame([{"setting": s, "seed": seed, **sizes}
                                                  for s, by_seed in data["splits"].items()
                                                  for seed, sizes in by_seed.items()])))
    if data.get("localization_facts"):
        parts.append(f"<p>Every localization method used the same {len(next(iter(data['localization_facts'].values())))} "
                     "localization facts per seed (listed in data.json).</p>")
    return parts + sections.formats(data, cells, settings)


def _per_setting(cells: list[dict], settings: list[str], methods: list[str], out_dir: Path) -> list[str]:
    parts = ["<h2>Results per setting</h2>"]
    everyone = [*methods, BASE]
    for setting in settings:
        sub = [c for c in cells if c["setting"] == setting]
        here = present(sub)
        parts.append(f"<h3>{html.escape(setting)}</h3><div class=grid>")
        parts.append(sections.img(plots.spider(cells, setting, everyone, here, out_dir / f"spider_{setting}.png")))
        for plot in (p for attack in ATTACKS.values() for p in attack.plots):
            series = {m: _mean_curve([c["curves"].get(plot.curve, []) for c in sub if c["method"] == m])
                      for m in everyone}
            parts.append(sections.img(plots.curves({k: v for k, v in series.items() if v}, f"{setting}: {plot.title}",
                                                   plot.xlabel, plot.ylabel, out_dir / f"{plot.file}_{setting}.png")))
        parts.append("</div>")
        summary = []
        for m in everyone:
            row = {"method": label(m), "params trained": _params(sub, m)}
            for metric in here:
                row[metric.label] = _fmt(estimate([c["metrics"].get(metric.name) for c in sub if c["method"] == m]))
            summary.append(row)
        parts.append(sections.table(pd.DataFrame(summary)))
    return parts


def _localizations(loc_dir: Path) -> list[str]:
    if not loc_dir.exists():
        return []
    parts = ["<h2>Localizations</h2><p class=note>Scores per layer and component type, and the fact-lookup "
             "evidence (probe curves, path-patching scores).</p><div class=grid>"]
    parts += [sections.img(p) for p in sorted(loc_dir.glob("*.png"))]
    parts.append("</div>")
    parts += sections.flu_stability(loc_dir)
    sizes = []
    for p in sorted(loc_dir.glob("*.selection.json")):
        sel = read_json(p)
        sizes.append({"selection": p.name.removesuffix(".selection.json"), "parameters": sel.get("n_params"),
                      "budget": sel.get("budget"), "rule": sel.get("rule"),
                      "components": ", ".join(sel.get("components", []))[:300]})
    if sizes:
        parts.append(sections.table(pd.DataFrame(sizes)))
    return parts


def _params(cells: list[dict], method: str) -> str:
    counts = sorted({c.get("n_params") for c in cells if c["method"] == method and c.get("n_params")})
    return ", ".join(f"{n:,}" for n in counts) if counts else "–"


def _mean_curve(runs: list[list]) -> list[tuple[float, float]]:
    runs = [r for r in runs if r]
    if not runs:
        return []
    by_x: dict[float, list[float]] = {}
    for run in runs:
        for x, y in run:
            by_x.setdefault(x, []).append(y)
    return [(x, sum(ys) / len(ys)) for x, ys in sorted(by_x.items())]
