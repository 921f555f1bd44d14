"""Report plots (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mechunlearn.report.methods import BASE, colour, label  # noqa: E402
from mechunlearn.report.metrics import Metric  # noqa: E402
from mechunlearn.report.stats import estimate  # noqa: E402


def _values(cells: list[dict], setting: str, method: str, metric: str) -> list[float]:
    return [c["metrics"][metric] for c in cells
            if c["setting"] == setting and c["method"] == method and c["metrics"].get(metric) is not None]


def _spider_value(metric: Metric, value: float, base: float | None) -> float:
    if metric.name == "lm_loss":
        return min(1.0, base / value) if base and value > 0 else math.nan
    return value if metric.higher_is_better else 1 - value


def spider(cells: list[dict], setting: str, methods: list[str], metrics: list[Metric], path: Path) -> Path | None:
    """The paper's spider plot: one polygon per method, every axis oriented 'outward = better'."""
    if len(metrics) < 3:
        return None
    base_loss = estimate(_values(cells, setting, BASE, "lm_loss")).mean if any(m.name == "lm_loss" for m in metrics) else None
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(7.5, 7.5), subplot_kw={"polar": True})
    for method in methods:
        vals = [_spider_value(m, estimate(_values(cells, setting, method, m.name)).mean, base_loss) for m in metrics]
        if all(math.isnan(v) for v in vals):
            continue
        vals = [0.0 if math.isnan(v) else v for v in vals]
        style = "--" if method == BASE else "-"
        ax.plot(angles + angles[:1], vals + vals[:1], style, color=colour(method), label=label(method))
        if method != BASE:
            ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.06, color=colour(method))
    labels = [("LM loss (base/edited)" if m.name == "lm_loss" else m.label if m.higher_is_better else f"not: {m.label}")
              for m in metrics]
    ax.set_xticks(angles, [_wrap(lab) for lab in labels], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"{setting}: outward is better", fontsize=11)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    return _save(fig, path)


def bars(cells: list[dict], settings: list[str], methods: list[str], metric: Metric, path: Path) -> Path:
    """One group per setting, one bar per method with its 95% interval over seeds; the
    unedited model as a dashed line."""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(settings) * max(1, len(methods)) / 3), 3.6))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        ests = [estimate(_values(cells, s, method, metric.name)) for s in settings]
        xs = np.arange(len(settings)) + (j - (len(methods) - 1) / 2) * width
        means = [e.mean for e in ests]
        errs = np.array([[e.mean - e.low for e in ests], [e.high - e.mean for e in ests]])
        ax.bar(xs, means, width, yerr=errs, capsize=2, color=colour(method), label=label(method))
    for i, s in enumerate(settings):
        base = estimate(_values(cells, s, BASE, metric.name)).mean
        if not math.isnan(base):
            ax.hlines(base, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label=label(BASE) if i == 0 else None)
    ax.set_xticks(range(len(settings)), settings, fontsize=8)
    ax.set_ylabel(_wrap(metric.label, 30), fontsize=8)
    ax.set_title(_wrap(f"{metric.label} ({'higher' if metric.higher_is_better else 'lower'} is better)", 55),
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, never on them
    return _save(fig, path)


def curves(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str, path: Path) -> Path | None:
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in sorted(series.items()):
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, "--" if name == BASE else "-o", markersize=3, color=colour(name), label=label(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_wrap(title, 55), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _wrap(text: str, width: int = 22) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends and titles outside the axes stay in the image
    plt.close(fig)
    return path
