from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape

from mechunlearn.cli.app import app, console, on_interrupt

# what a run folder holds: a non-empty folder without any of these is the user's, not a run's
RUN_FILES = ("config.json", "cells", "data.json", "localizations")


def _resumable(out: Path) -> None:
    from mechunlearn.cli.common import check_out_folder

    check_out_folder(out, "--out", RUN_FILES)
    on_interrupt(f"the finished cells and the known-facts scores are kept in {out}; the same command with "
                 f"--out {out} resumes")


@app.command("run")
def run(
    config: str = typer.Argument(..., help="Experiment YAML, or a packaged one by name: demo, quick, paper."),
    out: Path = typer.Option(..., "--out", help="Run folder; rerunning with the same folder resumes."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: KEY.PATH=YAML, e.g. seeds=[0,1,2] "
                                   "or data_dir=../shared/data. The value replaces the config's (a mapping too: "
                                   "localization.variants={} removes the variants). Repeatable."),
    settings: str | None = typer.Option(None, "--settings", help="Compute only these settings' cells "
                                        "(comma-separated names); the run folder keeps the whole config, so a later "
                                        "run with other settings (or none) resumes it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the memory estimate and the forward/backward "
                                 "passes of each stage, and exit without loading the weights or writing anything."),
    stop_on_failure: bool = typer.Option(False, "--stop-on-failure", help="Stop at a cell whose training "
                                         "diverges (default: name it, set it aside and go on)."),
    force: bool = typer.Option(False, "--force", help="Use localization files in the run folder that were made on "
                               "another model (default: refused, naming both models)."),
    workers: int = typer.Option(0, "--workers", help="Spread the cells over this many Ray workers (one GPU each "
                                "under CUDA, else a share of the CPU threads); needs the 'ray' extra."),
    address: str | None = typer.Option(None, "--address", help="An existing Ray cluster (default with --workers: "
                                       "a local one)."),
):
    """The paper's comparison: localize with every method, edit at the same budget, evaluate, report."""
    from mechunlearn.experiment.config import load_config, only_settings, parse_overrides

    resolved = load_config(config, parse_overrides(set_))
    only = [s.strip() for s in settings.split(",") if s.strip()] if settings else None
    work = only_settings(resolved, only) if only else resolved  # the folder keeps the whole config
    for line in work.inert():
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    if dry_run:
        from mechunlearn.experiment.estimate import run_guard
        from mechunlearn.models.memory_guard import print_estimate

        print_estimate(run_guard(work).estimate)
        return
    _resumable(out)
    start = time.perf_counter()
    if workers < 0 or (address and not workers):
        raise typer.BadParameter("--workers must be >= 1 to use Ray (and --address needs it)")
    if workers:
        from mechunlearn.experiment.distributed import run_on_ray

        run_on_ray(resolved, out, workers, address, console, only)
        console.print(f"finished in {time.perf_counter() - start:.0f} s")
        return
    from mechunlearn.experiment.runner import Experiment

    experiment = Experiment(resolved, out, console, only)
    experiment.stop_on_failure = stop_on_failure
    experiment.locs.force = force
    experiment.run()
    console.print(f"finished in {time.perf_counter() - start:.0f} s")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-results"), "--out", help="Run folder (resumes if it exists)."),
    quick: bool = typer.Option(False, "--quick", help="A smoke run: fewer methods, facts and steps."),
):
    """The default comparison on the embedded Gemma 3 270M and the built-in athletes: FLU, causal
    tracing, attribution patching, random and all-MLPs at FLU's budget; edit 16 athletes;
    evaluate formats, maintain, LM loss, relearning and probes; write the report."""
    from mechunlearn.experiment.config import load_config

    _resumable(out)
    config = load_config("quick" if quick else "demo")
    from mechunlearn.experiment.runner import Experiment

    start = time.perf_counter()
    Experiment(config, out, console).run()
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="A run folder written by 'run' or 'demo'.")):
    """(Re)write the HTML report, results.csv and verdicts.json of a run folder."""
    if not (run_dir / "cells").is_dir():
        raise typer.BadParameter(f"{run_dir} is not a run folder (no cells/)")
    from mechunlearn.report import write_report

    console.print(f"wrote {write_report(run_dir)}")


@app.command("plan")
def plan(
    run_dir: Path = typer.Argument(..., help="A finished run (a pilot of 2 or more seeds) written by 'run' or 'demo'."),
    delta: float | None = typer.Option(None, "--delta", help="The smallest difference that matters (default: the "
                                       "run's analysis.delta)."),
    against: str | None = typer.Option(None, "--against", help="Plan a focused run: FLU against only these methods "
                                       "(comma-separated, e.g. causal_tracing), so that Holm corrects over their "
                                       "comparisons alone (default: the run's analysis.against)."),
):
    """How many seeds each primary comparison needs for its minimum detectable effect to reach delta."""
    from dataclasses import replace

    if not (run_dir / "cells").is_dir():
        raise typer.BadParameter(f"{run_dir} is not a run folder (no cells/)")
    from mechunlearn.report.analysis import AnalysisSpec
    from mechunlearn.report.methods import BASE, OURS, split_arm
    from mechunlearn.report.planner import lines, plan

    spec = AnalysisSpec.of_run(run_dir)
    if delta is not None:
        if not delta > 0:
            raise typer.BadParameter(f"--delta must be > 0, got {delta}")
        spec = replace(spec, delta=delta, delta_per_metric={})
    if against is not None:
        held = {split_arm(p.stem.split("__")[1])[0] for p in (run_dir / "cells").glob("*__*__*.json")} - {OURS, BASE}
        names = tuple(m.strip() for m in against.split(",") if m.strip())
        unknown = [m for m in names if m not in held]
        if unknown or not names:
            raise typer.BadParameter(f"--against {against!r}: {', '.join(unknown) or 'no method'} is not an arm FLU is "
                                     f"compared with in this run (it holds {', '.join(sorted(held))})")
        spec = replace(spec, against=names)
    for line in lines(plan(run_dir, spec)):
        console.print(line, highlight=False, markup=False)
