from __future__ import annotations

from pathlib import Path

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
    check_model_args,
    check_out_file,
    check_threshold,
    known_facts,
    open_model,
    relation_facts,
)
from mechunlearn.io import write_text_atomic

facts_app = typer.Typer(no_args_is_help=True, help="Fact sets: which facts a model knows.")
app.add_typer(facts_app, name="facts")


FEW_KNOWN = 0.25  # below this fraction known, say why that is likely


@facts_app.command("known")
def known(
    model: str = MODEL, dataset: str = DATASET, data: str = DATA, threshold: float = THRESHOLD,
    dtype: str = DTYPE, device: str = DEVICE, seed: int = SEED,
    out: Path = typer.Option(Path("known.csv"), "--out", help="CSV of every fact with P(true) and whether it is known."),
    relation: str = typer.Option(None, "--relation", help="Score the facts of this relation only (the table's "
                                 "'relation' column), as a run setting with 'relation:' reads them."),
):
    """Score every fact's true answer and report how many the model knows, per answer."""
    check_out_file(out)
    check_threshold(threshold)
    check_model_args({"--model": model}, dtype, device)
    import pandas as pd

    from mechunlearn.facts import load_facts

    facts = relation_facts(load_facts(dataset, data, seed=seed), relation)
    from mechunlearn.facts.known import FEW_KNOWN_REMEDY, NoFactsKnownError

    lm = open_model(model, dtype, device)
    try:
        kept, report = known_facts(lm, dataset, data, seed, threshold, facts=facts)
        p_true, used, notes, known_ids = report.p_true, report.threshold, report.notes, {f.id for f in kept}
    except NoFactsKnownError as e:
        p_true, used, notes, known_ids = e.p_true, e.threshold, list(facts.notes), set()
    rows = pd.DataFrame([{"id": f.id, "subject": f.subject, "answer": f.target_true.strip(), "p_true": p_true[f.id],
                          "known": f.id in known_ids} for f in facts])
    write_text_atomic(out, rows.to_csv(index=False))

    of = f" of the relation {relation!r}" if relation else ""
    table = Table(title=f"facts{of} known by {model} (P(true) > {used})")
    table.add_column("answer")
    table.add_column("known", justify="right")
    table.add_column("total", justify="right")
    known_by_answer = rows[rows.known].groupby("answer").size().to_dict()
    for answer, total in facts.count_by_answer().items():
        table.add_row(answer, str(known_by_answer.get(answer, 0)), str(total))
    table.add_row("[b]all[/b]", f"[b]{len(known_ids)}[/b]", f"[b]{len(facts)}[/b]")
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True)
    if len(known_ids) < FEW_KNOWN * len(facts):
        console.print(f"[yellow]few facts known:[/yellow] {len(known_ids)} of {len(facts)} at P(true) > {used} "
                      f"(median P(true) {rows.p_true.median():.3f}); {FEW_KNOWN_REMEDY}", soft_wrap=True)
    console.print(f"wrote {out} (P(true) of every fact)")
