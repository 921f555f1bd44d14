"""Seconds per training step of the localized trainer on the embedded Gemma 3 270M (16 forget +
16 maintain prompts + 2 general windows of 64 tokens, MLPs 2-7), against the same step without
the shared-prefix pass and without the general-text term, measured in the same run.

    python benchmarks/bench_edit.py [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import mechunlearn.edit.trainer as trainer_module
from mechunlearn.edit import EditConfig, expand_components, train
from mechunlearn.facts import load_builtin_athletes, split_facts
from mechunlearn.models.loading import load_model
from mechunlearn.models.scoring import final_hidden


def step_seconds(lm, split, components, steps: int, **config) -> float:
    params = {s.param for c in expand_components(lm.arch, components) for s in lm.arch.component(c).slices}
    saved = {n: p.detach().clone() for n, p in lm.model.named_parameters() if n in params}
    start = time.perf_counter()
    train(lm, components, split, EditConfig(steps=steps, **config), progress=False)
    seconds = (time.perf_counter() - start) / steps
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default")
    # the first 200 built-in athletes, unfiltered: timing does not need known facts
    facts = load_builtin_athletes()
    split = split_facts(facts.subset(facts.facts[:200]), forget=16, seed=0)
    components = "blocks.2..7.mlp"
    base = step_seconds(lm, split, components, args.steps)
    rows = [("default step", base)]
    shared = trainer_module.final_hidden_shared
    trainer_module.final_hidden_shared = lambda model, batch: final_hidden(model, batch)
    try:
        rows.append(("without the shared-prefix pass", step_seconds(lm, split, components, args.steps)))
    finally:
        trainer_module.final_hidden_shared = shared
    rows.append(("without the general-text term", step_seconds(lm, split, components, args.steps, c_general=0)))
    print(f"{'configuration':34s} {'s/step':>8s} {'ratio':>6s}")
    for label, seconds in rows:
        print(f"{label:34s} {seconds:8.2f} {seconds / base:6.2f}")


if __name__ == "__main__":
    main()
