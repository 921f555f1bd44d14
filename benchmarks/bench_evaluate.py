"""Fact scoring on the embedded Gemma 3 270M, the shared-prefix paths against the plain forward,
side by side in one process: ``evaluate_facts`` on 16 known built-in athletes in the train, qa
and mcq formats, and ``answer_probs`` (the known-fact filter and the strength checks) on 64
athletes. "before" swaps the plain forward back in where evaluation looks it up; the
probabilities of both paths are compared (max absolute difference).

    python benchmarks/bench_evaluate.py [--repeats 2] [--threads 1] [--model default|tiny] [--json out.json]
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from bench_common import command_line, matmul_flops_per_second, print_rows, side_by_side

import mechunlearn.evaluate.metrics as metrics_module
import mechunlearn.facts.known as known_module
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.facts import answer_probs, filter_known, load_builtin_athletes
from mechunlearn.models.encoding import final_hidden
from mechunlearn.models.loading import load_model
from mechunlearn.models.scoring import continuation_logprobs, last_token_logits
from mechunlearn.models.tiny import tiny_model

FORMATS = ("train", "qa", "mcq")
PLAIN = {
    metrics_module: {"final_hidden_shared": final_hidden,
                     "continuation_logprobs": partial(continuation_logprobs, shared=False)},
    known_module: {"last_token_logits": partial(last_token_logits, shared=False)},
}


@contextmanager
def plain_forward():
    """The scoring as it was: one full forward per batch, each prompt once per option."""
    saved = [(m, n, getattr(m, n)) for m, names in PLAIN.items() for n in names]
    for m, names in PLAIN.items():
        for n, fn in names.items():
            setattr(m, n, fn)
    try:
        yield
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)


def before(fn):
    def run():
        with plain_forward():
            return fn()
    return run


def probabilities(result) -> torch.Tensor:
    if isinstance(result, tuple):  # answer_probs: P(true), P(edit target)
        return torch.cat([result[0], result[1]])
    return torch.tensor([v for r in result.rows for v in (r.p_true, r.p_new) if v is not None])


def run(model: str = "default", repeats: int = 2, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    lm = tiny_model("gemma", n_layers=8) if model == "tiny" else load_model(model)
    athletes = load_builtin_athletes()
    if model == "tiny":  # a random model knows nothing: time it on the first 16
        evaluated = athletes.subset(athletes.facts[:16])
    else:
        known = filter_known(lm.model, lm.tokenizer, athletes.subset(athletes.facts[:200])).known
        evaluated = known.subset(known.facts[:16])
    scored = athletes.subset(athletes.facts[:64])
    configs = {
        "evaluation": lambda: evaluate_facts(lm, evaluated, FORMATS),
        "answer_probs": lambda: answer_probs(lm.model, lm.tokenizer, scored),
    }
    peak = matmul_flops_per_second()
    rows, differences = [], {}
    with torch.no_grad():
        for stage, fn in configs.items():
            rows += side_by_side(stage, {"shared prefix": fn, "before: plain forward": before(fn)}, repeats, peak)
            differences[stage] = float((probabilities(fn()) - probabilities(before(fn)())).abs().max())
    for stage in configs:
        if len({r.flops for r in rows if r.stage == stage}) < 2:
            raise RuntimeError(f"{stage}: both configurations did the same work; the swap did not take effect")
    print(f"model {lm.spec}, {threads} threads, fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"{len(evaluated)} facts x {', '.join(FORMATS)}; answer_probs on {len(scored)} athletes")
    printed = print_rows(rows, {stage: "shared prefix" for stage in configs})
    for stage, diff in differences.items():
        print(f"{stage}: max |P(shared) - P(plain)| = {diff:.2e}")
    return {"model": lm.spec, "threads": threads, "repeats": repeats, "rows": printed,
            "max_abs_probability_difference": differences}


def main() -> None:
    command_line(run, __doc__, "default", 1)


if __name__ == "__main__":
    main()
