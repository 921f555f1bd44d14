"""Every MCQ variant and QA template on the unedited embedded model, on a seeded sample of the
built-in athletes it knows: mean P(true), accuracy, chance and seconds per fact (docs/mcq_formats.md).

    OMP_NUM_THREADS=1 python benchmarks/measure_mcq_formats.py --sample 64 --out /tmp/mcq_formats.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from mechunlearn.evaluate.formats import MCQ_FORMATS, QA_TEMPLATES, FormatStyle, mcq_shots
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.facts import filter_known, load_builtin_athletes
from mechunlearn.models.loading import load_model


def measure(lm, facts, fmt: str, style: FormatStyle, label: str, seed: int) -> dict:
    start = time.perf_counter()
    result = evaluate_facts(lm, facts, (fmt,), seed=seed, batch_size=8, style=style)
    seconds = time.perf_counter() - start
    rows = [r for r in result.rows if r.format == fmt]
    p = [r.p_true for r in rows]
    chance = statistics.mean(1 / len(r.options) for r in rows) if fmt == "mcq" else 1 / len(facts.answers)
    return {
        "variant": label, "format": fmt, "n": len(rows), "p_true": statistics.mean(p),
        "p_true_se": statistics.stdev(p) / len(p) ** 0.5, "p_new": statistics.mean(r.p_new for r in rows),
        "accuracy": statistics.mean(r.correct for r in rows), "chance": chance, "seconds_per_fact": seconds / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mcq_formats.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_model("default")
    known = filter_known(lm.model, lm.tokenizer, load_builtin_athletes()).known
    facts = known.subset(random.Random(args.seed).sample(known.facts, min(args.sample, len(known))), "sample")
    print(f"{len(known)} known athletes; measuring {len(facts)}", flush=True)
    table = [measure(lm, facts, "train", FormatStyle(), "train (reference)", args.seed)]
    for template in QA_TEMPLATES:
        table.append(measure(lm, facts, "qa", FormatStyle(qa_template=template), f"qa {template}", args.seed))
        print(table[-1], flush=True)
    for variant in MCQ_FORMATS:
        table.append(measure(lm, facts, "mcq", FormatStyle(mcq_format=variant), variant, args.seed))
        table[-1]["shots"] = mcq_shots(facts, variant)
        print(table[-1], flush=True)
    record = {"model": lm.spec, "known": len(known), "sample": len(facts), "seed": args.seed,
              "threads": torch.get_num_threads(), "device": str(lm.device), "table": table}
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
