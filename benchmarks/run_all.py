"""Every benchmark in one process, results in one JSON file (``make bench``).

    python benchmarks/run_all.py [--out bench-results.json] [--threads 2] [--model default|tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import bench_cell
import bench_edit
import bench_evaluate
import bench_localize
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="default", help="steps and evaluation: 'default' (embedded Gemma 3 "
                        "270M) or 'tiny'; the localization benchmark always uses its tiny 8-layer llama")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    print("== localization: batched patch variants vs one forward pass per patch")
    localize = bench_localize.run("tiny", None, args.threads)
    print("\n== forward, training step, relearning step, evaluation")
    steps = bench_edit.run(args.model, args.repeats, args.threads)
    print("\n== fact scoring: shared-prefix paths vs the plain forward")
    scoring = bench_evaluate.run(args.model, args.repeats, args.threads)
    cell = None
    if args.model == "default":
        print("\n== one cell of the demo (fact_lookup, seed 0), stage by stage")
        cell = bench_cell.run("demo", [], None, "fact_lookup", 0, args.threads, bench_cell.DEFAULT_WORK / "demo")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": args.threads},
              "seconds": time.perf_counter() - start, "localize": localize, "steps": steps,
              "scoring": scoring, "cell": cell}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
