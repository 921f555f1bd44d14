"""Forward pass, training step, relearning step and evaluation on the embedded Gemma 3 270M, each
configuration timed side by side in one process, with its achieved FLOP rate as a fraction of the
fp32 matmul throughput measured in the same run.

Sizes are the demo's: 16 forget + 16 maintain prompts + 2 general windows of 64 tokens, MLPs 2-7
trained (training step); LoRA rank 64 on every linear layer, 8 edited + 4 maintain prompts + 1
window (relearning step); 16 facts in the train, qa and mcq formats (evaluation). A "before"
configuration swaps the replaced code back in where the step uses it: the plain full forward
instead of the shared-prefix pass, and one projection to the vocabulary per loss term instead of
one shared by the terms.

    python benchmarks/bench_edit.py [--repeats 2] [--threads 2] [--model default|tiny] [--json out.json]
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

import torch
from bench_common import command_line, matmul_flops_per_second, print_rows, side_by_side

import mechunlearn.edit.step as step_module
from mechunlearn.edit import EditConfig, expand_components
from mechunlearn.edit.data import fact_term
from mechunlearn.edit.objectives import get_objective
from mechunlearn.edit.selection import TrainableWeights
from mechunlearn.evaluate.attacks.common import model_copy, true_token_ids
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.facts import load_builtin_athletes, split_facts
from mechunlearn.facts.general_text import general_windows
from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.loading import load_model
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import unembed
from mechunlearn.models.tiny import tiny_model

COMPONENTS = "blocks.2..7.mlp"
# the package re-exports the function ``relearn`` under the module's name
relearn_module = importlib.import_module("mechunlearn.evaluate.attacks.relearn")


def unembed_each(model, parts):
    """A projection to the vocabulary per loss term, as before the terms shared one."""
    return [unembed(model, hidden, ids) for hidden, ids in parts]


@contextmanager
def swapped(module, **names):
    """Replace module-level names where the step looks them up, for the duration of a call."""
    saved = {n: getattr(module, n) for n in names}
    for n, v in names.items():
        setattr(module, n, v)
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(module, n, v)


def in_context(fn, make_context):
    def run():
        with make_context():
            return fn()
    return run


BEFORE = {"final_hidden_shared": final_hidden, "unembed_together": unembed_each}


def training_step(lm, split):
    config = EditConfig().validate().resolved(split.forget.closed)
    objective, maintain = get_objective(config.objective), get_objective("maintain")
    forget = fact_term(lm.tokenizer, split.forget, objective.answer, config.forget_over)
    keep = fact_term(lm.tokenizer, split.maintain_train, maintain.answer, "vocab")
    windows = general_windows(lm.tokenizer, None, config.general_length, part="train")
    terms = step_module.LossTerms(lm.model, lm.tokenizer, config, objective, maintain, forget, keep, windows)
    components = [lm.arch.component(n) for n in expand_components(lm.arch, COMPONENTS)]
    weights = TrainableWeights(lm.model, components)
    optimizer = torch.optim.AdamW(weights.tensors, lr=config.lr)
    drawn = {"forget": list(range(len(forget))), "maintain": list(range(min(16, len(keep)))),
             "general": list(range(config.general_batch_size))}

    def step(without_general: bool = False):
        terms.windows = None if without_general else windows
        terms.backward(drawn, 0, 1)
        weights.collect_grads()
        torch.nn.utils.clip_grad_norm_(weights.tensors, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        weights.after_step()

    return weights, step


def relearning_step(lm, split):
    attacked = model_copy(lm)
    model, tok = attacked.model, lm.tokenizer
    train = split.forget.subset(split.forget.facts[:8])
    facts = [*train, *split.maintain_train.facts[:4]]
    batch = encode(tok, [f.prompt for f in facts])
    targets = true_token_ids(tok, split.forget.subset(facts))
    windows = general_windows(tok, None, 64, 1, 0, part="train")
    loss_fn = relearn_module.RelearnLoss(batch, targets, len(train), windows)
    params = relearn_module._trainable(model, relearn_module.RelearnConfig(rank=64))
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def run(model: str = "default", repeats: int = 2, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    lm = tiny_model("gemma", n_layers=8) if model == "tiny" else load_model(model)
    facts = load_builtin_athletes()  # the first 200, unfiltered: timing does not need known facts
    split = split_facts(facts.subset(facts.facts[:200]), forget=16, seed=0)
    peak_before = matmul_flops_per_second()
    rows = []

    batch = encode(lm.tokenizer, [f.prompt for f in [*split.forget, *split.maintain_train.facts[:16]]])
    with torch.no_grad():
        rows += side_by_side("forward", {
            "plain forward (32 prompts)": lambda: final_hidden(lm.model, batch),
            "shared-prefix pass (32 prompts)": lambda: final_hidden_shared(lm.model, batch),
        }, repeats, peak_before)

    weights, step = training_step(lm, split)
    weights.activate()
    try:
        rows += side_by_side("training step", {
            "default": step,
            "before: plain forward, a vocabulary pass per term": in_context(
                step, lambda: swapped(step_module, **BEFORE)),
            "without the shared-prefix pass": in_context(
                step, lambda: swapped(step_module, final_hidden_shared=final_hidden)),
            "a vocabulary pass per term": in_context(step, lambda: swapped(step_module, unembed_together=unembed_each)),
            "without the general-text term": lambda: step(without_general=True),
        }, repeats, peak_before)
    finally:
        weights.restore_original()
        weights.deactivate()

    relearn_step = relearning_step(lm, split)
    rows += side_by_side("relearning step", {
        "default": relearn_step,
        "before: plain forward, a vocabulary pass per term": in_context(
            relearn_step, lambda: swapped(relearn_module, **BEFORE)),
        "without the shared-prefix pass": in_context(
            relearn_step, lambda: swapped(relearn_module, final_hidden_shared=final_hidden)),
        "a vocabulary pass per term": in_context(relearn_step, lambda: swapped(relearn_module, unembed_together=unembed_each)),
    }, repeats, peak_before)

    with torch.no_grad():
        rows += side_by_side("evaluation", {
            "16 facts x train, qa, mcq": lambda: evaluate_facts(lm, split.forget, ("train", "qa", "mcq")),
        }, repeats, peak_before)

    peak_after = matmul_flops_per_second()
    for r in rows:  # the machine's best rate seen in this run
        r.peak = max(peak_before, peak_after)
    for stage in ("forward", "training step", "relearning step"):
        stage_rows = [r for r in rows if r.stage == stage]
        if len({r.flops for r in stage_rows}) < 2:
            raise RuntimeError(f"{stage}: every configuration did the same work; a swap did not take effect")
    print(f"model {lm.spec}, {threads} threads, fp32 matmul peak {peak_before / 1e9:.1f} GFLOP/s before the stages, "
          f"{peak_after / 1e9:.1f} after")
    baseline = {"forward": "plain forward (32 prompts)", "training step": "default", "relearning step": "default",
                "evaluation": "16 facts x train, qa, mcq"}
    return {"model": lm.spec, "threads": threads, "repeats": repeats,
            "matmul_peak_gflop_per_s": {"before": peak_before / 1e9, "after": peak_after / 1e9},
            "rows": print_rows(rows, baseline)}


def main() -> None:
    command_line(run, __doc__, "default", 2)


if __name__ == "__main__":
    main()
