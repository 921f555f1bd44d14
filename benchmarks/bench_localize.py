"""Batched patch variants vs the plain one-forward-per-patch loop, measured side by side.

Causal tracing (restore each head / MLP into the noised run) and activation patching (patch
each head / MLP from the corrupted run into the clean run), three ways:

* loop:    one full forward pass per patch (``PatchRunner.run_loop``);
* batched: the variants stacked along the batch, every one run from layer 0;
* reuse:   batched, and each variant starts at its patched layer from the cached base run, with
           the positions before the subject computed once (what the localizers use).

Prints seconds, the speed ratio against the loop, the achieved FLOP rate as a fraction of the
fp32 matmul throughput measured in the same run, and the max abs difference of the per-prompt
metric and of the component scores (must be < 1e-4).

    python benchmarks/bench_localize.py                       # tiny 8-layer llama, 24 prompts
    python benchmarks/bench_localize.py --model default --facts 8   # embedded Gemma 3 270M
"""

from __future__ import annotations

import time

import torch
from bench_common import Row, command_line, count_flops, matmul_flops_per_second

from mechunlearn.facts import FactSet, load_builtin_athletes
from mechunlearn.localize.causal_tracing import p_true
from mechunlearn.localize.corruption import (
    embedding_noise,
    random_subject_tokens,
    subject_embedding_std,
)
from mechunlearn.localize.metrics import AnswerScorer, normalized_effect, recovery
from mechunlearn.localize.patching import (
    PatchRunner,
    component_hook_names,
    component_variants,
    shared_prefix,
)
from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import load_model
from mechunlearn.models.tiny import tiny_model


def athletes(n: int) -> FactSet:
    """``n`` built-in athletes, taken in turn from each sport."""
    every = load_builtin_athletes()
    by_sport: dict[str, list] = {}
    for f in every:
        by_sport.setdefault(f.target_true, []).append(f)
    chosen = [f for group in zip(*by_sport.values(), strict=False) for f in group][:n]
    return every.subset(chosen)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(name: str, runners: dict[str, PatchRunner], variants, metric, score, peak: float) -> list[dict]:
    results = {}
    for mode, runner in runners.items():
        def call(r=runner, m=mode):
            return r.run_loop(variants) if m == "loop" else r.run(variants)

        hidden, seconds = timed(call)
        values = metric(hidden)  # [V, B]
        results[mode] = (values, torch.tensor([score(v) for v in values]), Row(name, mode, seconds, count_flops(call), peak))
    base_values, base_scores, base_row = results["loop"]
    print(f"\n{name}: {len(variants)} patches x {base_values.shape[1]} prompts")
    print(f"  {'mode':<8} {'seconds':>8} {'speed-up':>9} {'GFLOP':>8} {'of peak':>8} {'max |d metric|':>15} "
          f"{'max |d score|':>14}")
    out = []
    for mode, (values, scores, row) in results.items():
        d_metric = float((values - base_values).abs().max())
        d_score = float((scores - base_scores).abs().max())
        print(f"  {mode:<8} {row.seconds:8.2f} {base_row.seconds / row.seconds:8.1f}x {row.flops / 1e9:8.2f} "
              f"{row.fraction_of_peak:8.1%} {d_metric:15.2e} {d_score:14.2e}")
        # the modes compute the metric; a score divides it by (clean - corrupt), which on a few
        # prompts of a random tiny model can be ~1e-3 and magnify float noise past any fixed bound
        bound = 1e-5 * max(1.0, float(base_values.abs().max()))
        assert d_metric < bound, f"{mode} disagrees with the loop: metric differs by {d_metric:.2e}"
        out.append({**row.to_json(), "speed_up_vs_loop": base_row.seconds / row.seconds,
                    "max_abs_diff_metric": d_metric, "max_abs_diff_score": d_score})
    return out


def run(model: str = "tiny", n_facts: int | None = None, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    lm = tiny_model("llama", n_layers=8) if model == "tiny" else load_model(model)
    facts = athletes(n_facts or (24 if model == "tiny" else 8))
    peak = matmul_flops_per_second()
    arch = lm.arch
    print(f"model {lm.spec}: {arch.n_layers} layers x {arch.n_heads} heads, {len(facts)} prompts, "
          f"{torch.get_num_threads()} threads")
    scorer = AnswerScorer(lm.tokenizer, facts)
    batch = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts], device=lm.device)
    layers = range(arch.n_layers)
    index = torch.arange(len(facts))
    prefix = shared_prefix(batch)

    with torch.no_grad(), cache_activations(lm.model, ["hook_embed", *component_hook_names(layers)]) as clean:
        p_clean = p_true(scorer, lm, final_hidden(lm.model, batch))
    sigma = subject_embedding_std(clean["hook_embed"], batch.subject_mask)
    noise = embedding_noise(tuple(clean["hook_embed"].shape), batch.subject_mask.cpu(), sigma, 3.0, 0)[0]
    noise_hook = [("hook_embed", lambda act, _p: act + noise.to(act))]
    runners = {"loop": PatchRunner(lm, batch, noise_hook),
               "batched": PatchRunner(lm, batch, noise_hook, resume=False),
               "reuse": PatchRunner(lm, batch, noise_hook, prefix=prefix)}
    p_noised = p_true(scorer, lm, runners["loop"].base_hidden)
    rows = compare("causal tracing (metric: own P(true); score: recovery)", runners,
                   component_variants(arch, clean, layers), lambda h: p_true(scorer, lm, h),
                   lambda p: recovery(p, p_clean, p_noised), peak)

    corrupted = random_subject_tokens(lm.tokenizer, batch.to("cpu"), 0).to(lm.device)
    with torch.no_grad(), cache_activations(lm.model, component_hook_names(layers)) as corrupt:
        ld_corrupt = scorer.read(lm.model, final_hidden(lm.model, corrupted), index, need_p=False).logit_diff
    runners = {"loop": PatchRunner(lm, batch), "batched": PatchRunner(lm, batch, resume=False),
               "reuse": PatchRunner(lm, batch, prefix=prefix)}
    ld_clean = scorer.read(lm.model, runners["loop"].base_hidden, index, need_p=False).logit_diff

    def logit_diffs(hidden):
        return torch.stack([scorer.read(lm.model, h, index, need_p=False).logit_diff for h in hidden])

    rows += compare("activation patching (metric: logit difference; score: normalised effect)", runners,
                    component_variants(arch, corrupt, layers), logit_diffs,
                    lambda ld: normalized_effect(ld, ld_clean, ld_corrupt), peak)
    print(f"fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s")
    return {"model": lm.spec, "threads": threads, "prompts": len(facts), "matmul_peak_gflop_per_s": peak / 1e9,
            "rows": rows}


def main() -> None:
    command_line(run, __doc__, "tiny", 2, size=("facts", None, "prompts (default: 24 tiny, 8 otherwise)"))


if __name__ == "__main__":
    main()
