from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from mechunlearn.cli.app import app, console
from mechunlearn.cli.common import (
    DATA,
    DATASET,
    DEVICE,
    DTYPE,
    MODEL,
    SEED,
    THRESHOLD,
    known_facts,
    open_model,
)
from mechunlearn.io import write_text_atomic

facts_app = typer.Typer(no_args_is_help=True, help="Fact sets: which facts a model knows.")
app.add_typer(facts_app, name="facts")


@facts_app.command("known")
def known(
    model: str = MODEL, dataset: str = DATASET, data: str = DATA, threshold: float = THRESHOLD,
    dtype: str = DTYPE, device: str = DEVICE, seed: int = SEED,
    out: Path = typer.Option(None, "--out", help="CSV of every fact with P(true) and whether it is known."),
):
    """Score every fact's true answer and report how many the model knows, per answer."""
    lm = open_model(model, dtype, device)
    kept, report = known_facts(lm, dataset, data, seed, threshold)
    table = Table(title=f"facts known by {model} (P(true) > {report.threshold})")
    table.add_column("answer")
    table.add_column("known", justify="right")
    table.add_column("total", justify="right")
    for answer, total in report.total_by_answer.items():
        table.add_row(answer, str(report.known_by_answer.get(answer, 0)), str(total))
    table.add_row("[b]all[/b]", f"[b]{len(kept)}[/b]", f"[b]{report.total}[/b]")
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    if out:
        known_ids = {f.id for f in kept}
        rows = pd.DataFrame(
            [{"id": i, "p_true": p, "known": i in known_ids} for i, p in report.p_true.items()]
        )
        write_text_atomic(out, rows.to_csv(index=False))
        console.print(f"wrote {out}")
