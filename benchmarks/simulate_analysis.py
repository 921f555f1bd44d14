"""The verdict's analysis on simulated experiments: false positives, coverage, equivalence at the
margin and power, for seed means (the analysis) against a t-test that pools the facts of all seeds
as if they were independent. Prints a markdown table (docs/analysis.md).

    python benchmarks/simulate_analysis.py [--n 2000] [--seed-sd 0.05] [--fact-sd 0.25]
"""

from __future__ import annotations

import argparse

import numpy as np

from mechunlearn.report.simulate import experiments
from mechunlearn.report.stats import interval, mde, t_test, tost_p


def rate(flags) -> float:
    return float(np.mean(list(flags)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed-sd", type=float, default=0.05)
    ap.add_argument("--fact-sd", type=float, default=0.25)
    ap.add_argument("--effect", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.05)
    args = ap.parse_args()
    print(f"{args.n} experiments per design; seed sd {args.seed_sd}, fact sd {args.fact_sd}; planted effect "
          f"{args.effect} for power and coverage, delta {args.delta}; alpha 0.05, one comparison\n")
    print("| seeds | facts | false positives, seed means | false positives, pooled facts | power at "
          f"{args.effect}, seed means | power at {args.effect}, pooled facts | 95% coverage, seed means | "
          f"TOST 'equivalent' at true {args.delta} | MDE (80%), seed means |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seeds in (3, 5, 10, 20):
        for facts in (16, 64):
            rng = np.random.default_rng([seeds, facts])
            null = experiments(args.n, seeds, facts, 0.0, args.seed_sd, args.fact_sd, rng)
            real = experiments(args.n, seeds, facts, args.effect, args.seed_sd, args.fact_sd, rng)
            margin = experiments(args.n, seeds, facts, args.delta, args.seed_sd, args.fact_sd, rng)
            means = [e.mean(axis=2).tolist() for e in (null, real, margin)]  # per-seed means
            row = [
                rate(t_test(d)[2] <= 0.05 for d in means[0]),
                rate(t_test(e.ravel().tolist())[2] <= 0.05 for e in null),
                rate(t_test(d)[2] <= 0.05 for d in means[1]),
                rate(t_test(e.ravel().tolist())[2] <= 0.05 for e in real),
                rate(lo <= args.effect <= hi for lo, hi in (interval(d, 0.95) for d in means[1])),
                rate(tost_p(d, args.delta) <= 0.05 for d in means[2]),
                mde((args.seed_sd ** 2 + args.fact_sd ** 2 / facts) ** 0.5, seeds, 0.05),
            ]
            print(f"| {seeds} | {facts} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
