"""Figures of a localization (matplotlib, Agg; no display needed): a layer x matrix-type heatmap
of the scores, and FLU's probe curves with its path-patching scores."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mechunlearn.errors import MechunlearnError
from mechunlearn.localize.base import Localization
from mechunlearn.localize.scores import layer_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported where a figure is drawn: every command would pay for it at start-up

_MATRIX = re.compile(r"^blocks\.(\d+)\.(?:attn|mlp)\.(\w+)")


def _n_layers(loc: Localization) -> int:
    known = loc.evidence.get("model", {}).get("n_layers")
    if known:
        return int(known)
    layers = [int(m.group(1)) for k in loc.scores if (m := _MATRIX.match(k))]
    return max(layers, default=-1) + 1


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_heatmap(loc: Localization, path: str | Path, selected: list[str] | None = None) -> Path:
    """|score| per layer (columns) and matrix type (rows); outlined cells are ``selected``
    components (default: the method's own choice). Unscored cells are blank."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n_layers = _n_layers(loc)
    table = layer_table(loc.scores, n_layers)
    if not table:
        raise MechunlearnError(f"{loc.method}: no scores to plot")
    rows = list(table)
    grid = np.array([[np.nan if v is None else v for v in table[m]] for m in rows], dtype=float)
    fig = Figure(figsize=(max(6.0, 0.45 * n_layers + 2), 0.45 * len(rows) + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="|score| (matrix level)")
    ax.set_xticks(range(n_layers))
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("layer")
    ax.set_title(f"{loc.method}: {len(loc.fact_ids)} facts, {loc.model_spec}")
    marks = set()
    for name in selected if selected is not None else loc.chosen:
        m = _MATRIX.match(name)
        if m and m.group(2) in rows:
            marks.add((int(m.group(1)), rows.index(m.group(2))))
    for layer, row in marks:
        ax.add_patch(Rectangle((layer - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    return _save(fig, path)


def plot_probe_curves(loc: Localization, path: str | Path) -> Path:
    """FLU evidence: probe accuracy per residual point (subject alone / in prompt) with the
    chosen MLP layers shaded, and the MLP path-patching scores into the receiver layer."""
    ev = loc.evidence
    probes = ev.get("probes")
    if "mlp_path_patching" not in ev:
        raise MechunlearnError(f"{loc.method} has no fact-lookup evidence to plot")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    chosen = ev.get("flu_layers", [])
    for ax in (top, bottom):
        for layer in chosen:
            ax.axvspan(layer + 0.5, layer + 1.5, color="orange", alpha=0.2, lw=0)
        ax.axvline(ev["receiver_layer"] + 0.5, color="grey", ls=":")
    if probes:
        points = np.arange(len(probes["subject"]))
        top.plot(points, probes["subject"], marker="o", label="subject alone")
        top.plot(points, probes["prompt"], marker="s", label="in prompt")
        top.axhline(probes["chance"], color="black", ls="--", lw=1, label="majority class")
        top.set_ylabel(f"probe accuracy ({probes['folds']}-fold CV)")
        top.set_ylim(0, 1.02)
        top.legend(loc="lower right")
    else:
        top.text(0.5, 0.5, ev.get("probe_note") or "no probe evidence", ha="center", transform=top.transAxes)
    top.set_title(f"fact lookup: FLU MLPs {chosen} (shaded), receiver layer {ev['receiver_layer']} (dotted)")
    pp = {int(k): v for k, v in ev["mlp_path_patching"].items()}
    # MLP L writes the residual after block L: residual point L + 1.
    bottom.bar([layer + 1 for layer in pp], list(pp.values()),
               color=["tab:orange" if layer in chosen else "tab:blue" for layer in pp])
    threshold = loc.params.get("threshold")
    if threshold is not None:
        bottom.axhline(threshold, color="black", ls="--", lw=1)
    bottom.set_ylabel("MLP path patching\n(normalised logit diff)")
    bottom.set_xlabel("residual point (0 = embeddings, l + 1 = after block l)")
    return _save(fig, path)
