"""The terminal summary of a run folder: metrics as rows, methods as columns, mean over seeds."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table


def summary_table(run_dir: Path) -> Table:
    from mechunlearn.report import results_table
    from mechunlearn.report.budget import outside
    from mechunlearn.report.html import load_cells
    from mechunlearn.report.methods import ordered, short
    from mechunlearn.report.metrics import present

    cells = load_cells(run_dir)
    df = results_table(cells)
    methods = ordered(df.method.unique())
    table = Table(title="mean over seeds (↑ higher is better, ↓ lower is better)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, title_justify="left")
    table.add_column("setting / metric", no_wrap=True, max_width=26, overflow="ellipsis")
    for m in methods:
        table.add_column(short(m), justify="right", no_wrap=True, min_width=max(5, len(short(m))))
    for setting, group in df.groupby("setting", sort=True):
        by_method = group.groupby("method")
        table.add_row(f"[b]{setting}[/b]", *[""] * len(methods))
        table.add_row("  trained parameters",
                      *[f"{by_method.get_group(m).n_params.iloc[0] / 1e6:.1f}M" if m in by_method.groups else "–"
                        for m in methods])
        for metric in present([c for c in cells if c["setting"] == setting]):
            values = [by_method.get_group(m)[metric.name].mean() if m in by_method.groups else float("nan")
                      for m in methods]
            arrow = "↑" if metric.higher_is_better else "↓"
            table.add_row(f"  {metric.name} {arrow}", *["–" if v != v else f"{v:.3f}" for v in values])
    flagged = outside(cells)
    if flagged:  # the report says the same at the top and in every verdict involving these arms
        table.caption = "outside the budget's tolerance: " + "; ".join(
            f"{short(arm)} in {setting} (" + ", ".join(f"seed {seed} {gap:+.0%}" for seed, gap in gaps) + ")"
            for (setting, arm), gaps in flagged.items())
        table.caption_style, table.caption_justify = "bold red", "left"
    return table
