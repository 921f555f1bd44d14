"""A self-contained HTML report (plots embedded) and results.csv for one run folder.

Run folder layout (written by ``experiment.py``): ``config.json``, ``data.json``,
``cells/*.json`` (one per setting x method x seed, and the unedited model as method
``unedited``), ``localizations/*.json`` with their ``*.png`` plots.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from mechunlearn.io import read_json, write_text_atomic
from mechunlearn.report import plots
from mechunlearn.report.metrics import present
from mechunlearn.report.stats import compare, estimate, verdict

OURS = "fact_lookup"
OUTPUT_TRACING = ("causal_tracing", "attribution_patching", "causal_tracing_mlps", "attribution_patching_mlps")


def load_cells(run_dir: Path) -> list[dict]:
    return [read_json(p) for p in sorted((run_dir / "cells").glob("*.json"))]


def results_table(cells: list[dict]) -> pd.DataFrame:
    rows = [{"setting": c["setting"], "method": c["method"], "seed": c["seed"], "n_params": c.get("n_params"),
             **c["metrics"]} for c in cells]
    return pd.DataFrame(rows).sort_values(["setting", "method", "seed"]).reset_index(drop=True)


def verdicts(cells: list[dict]) -> list[dict]:
    """Per setting and robustness/side-effect metric: did FLU beat each output-tracing method?"""
    out = []
    methods = {c["method"] for c in cells}
    for setting in sorted({c["setting"] for c in cells}):
        for metric in present([c for c in cells if c["setting"] == setting]):
            ours = {c["seed"]: c["metrics"][metric.name] for c in cells
                    if c["setting"] == setting and c["method"] == OURS and c["metrics"].get(metric.name) is not None}
            for theirs_name in [m for m in OUTPUT_TRACING if m in methods]:
                theirs = {c["seed"]: c["metrics"][metric.name] for c in cells if c["setting"] == setting
                          and c["method"] == theirs_name and c["metrics"].get(metric.name) is not None}
                if not ours or not theirs:
                    continue
                diff = compare(ours, theirs, metric.higher_is_better)
                out.append({"setting": setting, "metric": metric.name, "vs": theirs_name, "advantage": diff.mean,
                            "low": diff.low, "high": diff.high, "n": diff.n,
                            "text": verdict(diff, "FLU", theirs_name.replace("_", " "), metric.label)})
    return out


def _img(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="t")


def _fmt(e) -> str:
    if math.isnan(e.mean):
        return "–"
    return f"{e.mean:.3f}" if e.n < 2 else f"{e.mean:.3f} ± {e.half_width:.3f}"


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.t{border-collapse:collapse;font-size:.85em;margin:.5em 0}table.t td,table.t th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right}
table.t th{background:#f4f4f4}img{max-width:100%;margin:.5em 0}.note{color:#555;font-size:.9em}
.win{color:#070}.lose{color:#a00}.tie{color:#555}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:540px}"""


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = load_cells(run_dir)
    if not cells:
        raise FileNotFoundError(f"{run_dir}/cells has no results yet")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    data = read_json(run_dir / "data.json") if (run_dir / "data.json").exists() else {}
    table = results_table(cells)
    write_text_atomic(run_dir / "results.csv", table.to_csv(index=False))
    found = verdicts(cells)
    write_text_atomic(run_dir / "verdicts.json", json.dumps(found, indent=1))

    settings = sorted({c["setting"] for c in cells})
    methods = sorted({c["method"] for c in cells} - {plots.BASE}, key=lambda m: (m != OURS, m))
    seeds = sorted({c["seed"] for c in cells})
    parts = [f"<h1>mechunlearn report: {html.escape(str(config.get('model', '')))}</h1>",
             f"<p class=note>{len(settings)} setting(s) × {len(methods)} method(s) × {len(seeds)} seed(s) "
             f"({', '.join(map(str, seeds))}). Intervals are 95% t-intervals over seeds; with one seed there is none. "
             "Probabilities, not argmax: closed answer sets are normalised over the answer set.</p>"]

    parts.append("<h2>What the comparison found</h2>")
    if found:
        rows = []
        for v in found:
            cls = "win" if v["n"] > 1 and v["low"] > 0 else "lose" if v["n"] > 1 and v["high"] < 0 else "tie"
            rows.append(f"<li class={cls}><b>{html.escape(v['setting'])}</b>: {html.escape(v['text'])}</li>")
        parts.append("<ul>" + "".join(rows) + "</ul>")
    else:
        parts.append("<p>No FLU vs output-tracing comparison in this run.</p>")

    parts.append("<h2>Data</h2>")
    for key, known in data.items():
        if not key.startswith("known"):
            continue
        scope = "" if key == "known" else f"Setting {key.removeprefix('known_')}: "
        source = known.get("data") or f"built-in {known.get('dataset', '')}".strip()
        per_answer = f" (per answer: {json.dumps(known['known_by_answer'])})" if known.get("known_by_answer") else ""
        parts.append("<p>" + html.escape(f"{scope}{known.get('known')} of {known.get('total')} facts ({source}) known "
                                         f"by the model at P(true) > {known.get('threshold')}{per_answer}. "
                                         + " ".join(known.get("notes", []))) + "</p>")
    for name, reason in (data.get("skipped") or {}).items():
        parts.append(f"<p class=lose>Setting {html.escape(name)} was skipped: {html.escape(reason)}</p>")
    if data.get("splits"):
        parts.append(_table(pd.DataFrame([{"setting": s, "seed": seed, **sizes} for s, by_seed in data["splits"].items()
                                          for seed, sizes in by_seed.items()])))
    if data.get("localization_facts"):
        parts.append(f"<p>Every localization method used the same {len(next(iter(data['localization_facts'].values())))} "
                     "localization facts per seed (listed in data.json).</p>")

    parts.append("<h2>Results per setting</h2>")
    metrics = present(cells)
    for setting in settings:
        sub = [c for c in cells if c["setting"] == setting]
        here = present(sub)
        parts.append(f"<h3>{html.escape(setting)}</h3><div class=grid>")
        parts.append(_img(plots.spider(cells, setting, [*methods, plots.BASE], here, out_dir / f"spider_{setting}.png")))
        relearn = {m: _mean_curve([c["curves"].get("relearn", []) for c in sub if c["method"] == m])
                   for m in [*methods, plots.BASE]}
        parts.append(_img(plots.curves({k: v for k, v in relearn.items() if v}, f"{setting}: relearning",
                                       "relearning step", "P(true) on held-out forgotten facts",
                                       out_dir / f"relearn_{setting}.png")))
        probe = {m: _mean_curve([c["curves"].get("probe_truth", []) for c in sub if c["method"] == m])
                 for m in [*methods, plots.BASE]}
        parts.append(_img(plots.curves({k: v for k, v in probe.items() if v}, f"{setting}: latent probes",
                                       "layer", "probe reads the TRUE answer", out_dir / f"probe_{setting}.png")))
        parts.append("</div>")
        summary = []
        for m in [*methods, plots.BASE]:
            row = {"method": m, "params trained": _params(sub, m)}
            for metric in here:
                row[metric.label] = _fmt(estimate([c["metrics"].get(metric.name) for c in sub if c["method"] == m]))
            summary.append(row)
        parts.append(_table(pd.DataFrame(summary)))

    parts.append("<h2>Each metric across settings</h2><div class=grid>")
    for metric in metrics:
        parts.append(_img(plots.bars(cells, settings, methods, metric, out_dir / f"bars_{metric.name}.png")))
    parts.append("</div>")

    loc_dir = run_dir / "localizations"
    if loc_dir.exists():
        parts.append("<h2>Localizations</h2><p class=note>Scores per layer and component type, and the fact-lookup "
                     "evidence (probe curves, path-patching scores).</p><div class=grid>")
        parts += [_img(p) for p in sorted(loc_dir.glob("*.png"))]
        parts.append("</div>")
        sizes = []
        for p in sorted(loc_dir.glob("*.selection.json")):
            sel = read_json(p)
            sizes.append({"selection": p.name.removesuffix(".selection.json"), "parameters": sel.get("n_params"),
                          "budget": sel.get("budget"), "rule": sel.get("rule"),
                          "components": ", ".join(sel.get("components", []))[:300]})
        if sizes:
            parts.append(_table(pd.DataFrame(sizes)))

    parts.append("<h2>All cells</h2>" + _table(table))
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=1)) + "</pre>")
    page = f"<!doctype html><html><head><meta charset=utf-8><title>mechunlearn report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    return write_text_atomic(run_dir / "report.html", page)


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
