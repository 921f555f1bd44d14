"""The grid's cells spread over Ray workers (``mechunlearn run --workers N``): each worker is a Ray
actor that asks for one GPU under CUDA, else an equal share of the CPU threads, loads the model
once and runs the grid on the shared run folder, where the cell claims (``claims.py``) give every
cell to one worker and one worker localizes each seed's facts for all. A worker that dies leaves
its claims to the others; if none is left, a new round of workers finishes the grid. The driver
writes the report."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.config import RunConfig, from_dict
from mechunlearn.experiment.plan import plan
from mechunlearn.experiment.runner import Experiment
from mechunlearn.report import write_report

ROUNDS = 3


def _worker(threads: int):
    import ray

    @ray.remote(max_restarts=0)
    class Worker:
        def run(self, config: dict, out: str, only: list[str] | None) -> dict:
            import torch

            torch.set_num_threads(threads)
            experiment = Experiment(from_dict(config), out, Console(stderr=True), only)
            try:
                experiment.run(report=False)
            except MechunlearnError as e:  # skipped settings, diverged cells: the driver reports them
                return {"computed": experiment.computed, "error": str(e)}
            return {"computed": experiment.computed, "error": None}

    return Worker


def run_on_ray(config: RunConfig, out: str | Path, workers: int, address: str | None = None,
               console: Console | None = None, only: list[str] | None = None) -> Path | None:
    try:
        import ray
    except ImportError:
        raise MechunlearnError("--workers needs Ray: pip install 'mechunlearn[ray]' (or pip install ray)") from None
    import torch

    console = console or Console(stderr=True)
    out = Path(out)
    driver = Experiment(config, out, console, only)
    driver.check()
    cuda = torch.cuda.is_available() and config.device in (None, "cuda")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    Worker = _worker(threads=cpus)
    options = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": cpus}
    every = {f"{s}__{m}__s{seed}" for s, m, seed in plan(driver.work).cells}

    def missing() -> list[str]:
        return sorted(every - {p.stem for p in (out / "cells").glob("*.json")})

    errors: set[str] = set()
    for _ in range(ROUNDS):
        actors = [Worker.options(**options).remote() for _ in range(workers)]
        for ref in [a.run.remote(config.to_json(), str(out), only) for a in actors]:
            try:
                result = ray.get(ref)
                console.print(f"a worker computed {len(result['computed'])} cell(s)")
                errors.update([result["error"]] if result["error"] else [])
            except ray.exceptions.RayError as e:  # a worker died: its cells go to the others or the next round
                console.print(f"[yellow]a worker stopped: {str(e).splitlines()[0]}[/yellow]")
        if errors or not missing():
            break
    left = missing()
    report = write_report(out) if any((out / "cells").glob("*.json")) else None
    if report:
        console.print(f"report: {report}")
    if errors or left:
        raise MechunlearnError("; ".join(sorted(errors)) or f"{len(left)} cell(s) not computed "
                               f"({', '.join(left[:5])}); the report covers the others; rerun to compute them")
    return report
