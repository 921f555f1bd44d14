"""What one cell of a run costs, stage by stage: one arm of one setting trained and evaluated
exactly as ``mechunlearn run`` does it, with each stage's wall time, its matmul FLOPs (counted by
torch's dispatcher in a second, untimed pass of the same cell) and its FLOP rate as a fraction
of the fp32 matmul peak measured in the same run.

The known-facts filter and the localizations are computed once into ``--work`` and reused, so
only the cell is measured.

    python benchmarks/bench_cell.py [--config demo] [--setting edit16] [--method fact_lookup]
        [--set data_dir=../shared/data] [--seed 0] [--threads 2] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_common import matmul_flops_per_second
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from mechunlearn.experiment import Experiment, load_config, parse_overrides
from mechunlearn.experiment import facts as run_facts
from mechunlearn.profiling import StageRecorder

DEFAULT_WORK = Path(tempfile.gettempdir()) / "mechunlearn-bench-cell"


def prepared(config, work: Path, setting_name: str, seed: int):
    """The experiment, the setting, its seed's facts and the localizations (computed once in ``work``)."""
    experiment = Experiment(config, work, Console(stderr=True, quiet=True))
    setting = config.setting(setting_name)
    known, _ = experiment.known_facts(setting)
    facts = run_facts.seed_facts(config, known, setting, seed)
    tag = "" if not setting.facts else f"{setting.name}__"
    selections = experiment.locs.selections(experiment.fresh_model, facts, seed, tag)
    return experiment, setting, facts, selections


def measure_cell(experiment, setting, method: str, seed: int, facts, selections, flops: bool) -> tuple[StageRecorder, float, dict]:
    counter = FlopCounterMode(display=False) if flops else None
    recorder = StageRecorder(counter)
    start = time.perf_counter()
    with recorder.recording(), counter or contextlib.nullcontext():
        cell = experiment.run_cell(setting, method, seed, facts, selections.get(method), selections)
    return recorder, time.perf_counter() - start, cell


def table(timed: StageRecorder, counted: StageRecorder, total: float, total_flops: int, peak: float) -> list[dict]:
    rows = []
    for name, t in sorted(timed.totals.items(), key=lambda kv: -kv[1].seconds):
        flops = counted.totals[name].flops if name in counted.totals else 0
        rows.append({"stage": name, "calls": t.calls, "seconds": t.seconds, "share": t.seconds / total,
                     "gflop": flops / 1e9, "fraction_of_peak": flops / t.seconds / peak if t.seconds else 0.0})
    other = total - sum(r["seconds"] for r in rows)
    other_flops = total_flops - sum(t.flops for t in counted.totals.values())
    rows.append({"stage": "other (outside the marked stages)", "calls": 1, "seconds": other, "share": other / total,
                 "gflop": other_flops / 1e9, "fraction_of_peak": other_flops / other / peak if other > 0 else 0.0})
    return rows


def print_table(rows: list[dict], total: float, peak: float) -> None:
    print(f"{'stage':38s} {'calls':>5s} {'s':>7s} {'share':>6s} {'GFLOP':>8s} {'of peak':>8s}")
    for r in rows:
        print(f"{r['stage']:38s} {r['calls']:5d} {r['seconds']:7.2f} {r['share']:6.1%} {r['gflop']:8.1f} "
              f"{r['fraction_of_peak']:8.1%}")
    print(f"{'cell':38s} {'':5s} {total:7.2f} {1:6.1%}   (fp32 matmul peak {peak / 1e9:.1f} GFLOP/s)")


def _best(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bounds(lm, positions: int, tokens: tuple[int, ...], peak: float) -> list[dict]:
    """What caps a step below the matmul peak, measured alone: the memory bandwidth (a copy of the
    vocabulary matrix), the projection onto the vocabulary at ``positions`` rows (its weight is read
    once per pass), and a block's MLP matmul at each of ``tokens`` rows (narrow: 640 wide on Gemma 3
    270M; the relearning step's passes have 64-76 rows, the training step's 128-256), also on one
    thread at the fewest rows; each in fp32 and, where the CPU has it natively, bf16 at the most rows."""
    from mechunlearn.models.precision import cpu_bf16_native

    head = lm.model.get_output_embeddings().weight.detach()
    d_model = head.shape[1]
    d_mlp = lm.arch.d_mlp
    rows = []
    copy = torch.empty_like(head)
    seconds = _best(lambda: copy.copy_(head))
    rows.append({"what": f"copy of the {head.shape[0]} x {d_model} vocabulary matrix", "seconds": seconds,
                 "gb_per_s": 2 * head.numel() * 4 / seconds / 1e9, "fraction_of_peak": None})
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_bf16_native() else [])
    for dtype in dtypes:
        w = head.to(dtype)
        h = torch.randn(positions, d_model, dtype=dtype)
        seconds = _best(lambda h=h, w=w: torch.nn.functional.linear(h, w))
        flops = 2 * positions * d_model * head.shape[0]
        rows.append({"what": f"vocabulary projection, {positions} rows, {str(dtype)[6:]}", "seconds": seconds,
                     "gb_per_s": w.numel() * w.element_size() / seconds / 1e9,
                     "fraction_of_peak": flops / seconds / peak})
        up = torch.randn(d_mlp, d_model, dtype=dtype)
        threads = torch.get_num_threads()
        cases = ([(n, threads) for n in tokens] + [(min(tokens), 1)] * (threads > 1)
                 if dtype == torch.float32 else [(max(tokens), threads)])
        for n, t in cases:
            x = torch.randn(n, d_model, dtype=dtype)
            torch.set_num_threads(t)
            try:
                seconds = _best(lambda x=x, up=up: torch.nn.functional.linear(x, up), repeats=20)
            finally:
                torch.set_num_threads(threads)
            on = ", 1 thread" if t != threads else ""
            rows.append({"what": f"MLP up-projection {d_model} -> {d_mlp}, {n} rows, {str(dtype)[6:]}{on}",
                         "seconds": seconds, "gb_per_s": up.numel() * up.element_size() / seconds / 1e9,
                         "fraction_of_peak": 2 * n * d_model * d_mlp / seconds / peak})
    print(f"\n{'bound, measured alone':58s} {'ms':>8s} {'GB/s':>7s} {'of peak':>8s}")
    for r in rows:
        frac = "" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:8.1%}"
        print(f"{r['what']:58s} {r['seconds'] * 1e3:8.2f} {r['gb_per_s']:7.1f} {frac}")
    return rows


def run(config_name: str, overrides: list[str], setting: str | None, method: str, seed: int, threads: int,
        work: Path) -> dict:
    torch.set_num_threads(threads)
    config = load_config(config_name, parse_overrides(overrides))
    setting = setting or config.settings[0].name
    experiment, spec, facts, selections = prepared(config, work, setting, seed)
    if method not in selections and method != "unedited":
        raise SystemExit(f"no arm {method!r} in this config: {', '.join(selections)}")
    counted, _, _ = measure_cell(experiment, spec, method, seed, facts, selections, flops=True)
    total_flops = counted.flop_counter.get_total_flops()
    peak_before = matmul_flops_per_second()
    timed, total, cell = measure_cell(experiment, spec, method, seed, facts, selections, flops=False)
    peak = max(peak_before, matmul_flops_per_second())
    rows = table(timed, counted, total, total_flops, peak)
    print(f"cell {setting} · {method} · seed {seed}: {len(facts.splits[0].forget)} forget facts, "
          f"{cell.n_params / 1e6:.2f}M parameters trained, {threads} threads")
    print_table(rows, total, peak)
    config_edit = config.edit_config(method, spec, seed) if method in selections else None
    positions = (config_edit.maintain_batch_size + config_edit.general_batch_size * config_edit.general_length
                 if config_edit else 144)
    limits = bounds(experiment.lm, positions, (72, 136, 300), peak)
    return {"config": config_name, "setting": setting, "method": method, "seed": seed, "threads": threads,
            "seconds": total, "matmul_peak_gflop_per_s": peak / 1e9, "stages": rows, "bounds": limits,
            "metrics": cell.metrics, "train_steps": [t["steps"] for t in cell.train.get("target", [])]}


def whole_run(config_name: str, overrides: list[str], threads: int, out: Path) -> dict:
    """The whole run (known facts, localizations, every cell, the report) in a new folder, by stage."""
    torch.set_num_threads(threads)
    config = load_config(config_name, parse_overrides(overrides))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: the whole run is timed from scratch")
    peak_before = matmul_flops_per_second()
    recorder = StageRecorder()
    start = time.perf_counter()
    with recorder.recording():
        Experiment(config, out, Console(stderr=True, quiet=True)).run()
    total = time.perf_counter() - start
    peak = max(peak_before, matmul_flops_per_second())
    rows = table(recorder, StageRecorder(), total, 0, peak)
    print(f"whole run of {config_name}, {threads} threads, in {out}")
    print_table(rows, total, peak)
    return {"config": config_name, "threads": threads, "seconds": total, "stages": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="a run config: a YAML file or a packaged name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY.PATH=YAML, as `run --set`")
    parser.add_argument("--setting", default=None, help="default: the config's first setting")
    parser.add_argument("--method", default="fact_lookup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="known facts and localizations, kept between runs "
                        f"(default: {DEFAULT_WORK}/<config>)")
    parser.add_argument("--whole", type=Path, default=None, metavar="OUT",
                        help="time the whole run in the new folder OUT, by stage, instead of one cell")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.whole:
        result = whole_run(args.config, args.overrides, args.threads, args.whole)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    work = args.work or DEFAULT_WORK / Path(args.config).stem
    result = run(args.config, args.overrides, args.setting, args.method, args.seed, args.threads, work)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
