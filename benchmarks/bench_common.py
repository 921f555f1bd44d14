"""What the benchmarks share: the machine's fp32 matmul throughput measured in the same run,
FLOPs counted by torch's dispatcher (matmuls and attention: what a step's time should go to),
and configurations timed side by side (interleaved, best of the repeats)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_flops_per_second(size: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 rate of ``size x size`` matmuls over about ``seconds``, on the current threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        took = time.perf_counter() - start
        best, spent = max(best, 4 * 2 * size**3 / took), spent + took
    return best


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Row:
    stage: str  # forward | training step | relearning step | evaluation | localization
    config: str
    seconds: float  # best of the repeats
    flops: int  # one call
    peak: float  # fp32 matmul FLOP/s measured in this run

    @property
    def fraction_of_peak(self) -> float:
        return self.flops / self.seconds / self.peak

    def to_json(self) -> dict:
        return {"stage": self.stage, "config": self.config, "seconds": self.seconds, "gflop": self.flops / 1e9,
                "gflop_per_s": self.flops / self.seconds / 1e9, "fraction_of_peak": self.fraction_of_peak}


def side_by_side(stage: str, configs: dict[str, Callable[[], object]], repeats: int, peak: float,
                 setup: Callable[[], object] | None = None) -> list[Row]:
    """Each configuration once untimed (warm-up, FLOP count), then ``repeats`` rounds A, B, ... A,
    B, ...: a machine shared with other work slows every configuration of a round alike."""
    flops = {}
    for name, fn in configs.items():
        setup and setup()
        flops[name] = count_flops(fn)
    best = {name: float("inf") for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            setup and setup()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return [Row(stage, name, best[name], flops[name], peak) for name in configs]


def print_rows(rows: list[Row], baseline: dict[str, str]) -> list[dict]:
    """One line per row, with its time as a ratio to its stage's baseline configuration."""
    out = []
    print(f"{'stage':16s} {'configuration':40s} {'s':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'x base':>7s}")
    for r in rows:
        base = next(b for b in rows if b.stage == r.stage and b.config == baseline[r.stage])
        ratio = r.seconds / base.seconds
        print(f"{r.stage:16s} {r.config:40s} {r.seconds:8.3f} {r.flops / 1e9:8.2f} {r.flops / r.seconds / 1e9:8.2f} "
              f"{r.fraction_of_peak:8.1%} {ratio:7.2f}")
        out.append({**r.to_json(), "time_vs_baseline": ratio, "baseline": baseline[r.stage]})
    return out


def command_line(run: Callable[..., dict], doc: str, default_model: str, default_threads: int,
                 size: tuple[str, int | None, str] = ("repeats", 2, "timed repeats per configuration")) -> None:
    """``--model``, ``--<size>``, ``--threads`` and ``--json`` for ``run(model, size, threads)``."""
    name, default, help_text = size
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=default_model, help="'default' (embedded Gemma 3 270M), 'tiny' or a load_model spec")
    parser.add_argument(f"--{name}", type=int, default=default, help=help_text)
    parser.add_argument("--threads", type=int, default=default_threads)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    result = run(args.model, getattr(args, name), args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
