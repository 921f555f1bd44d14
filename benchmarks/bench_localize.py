"""Batched patch variants vs the plain one-forward-per-patch loop, measured side by side.

Causal tracing (restore each head / MLP into the noised run) and activation patching (patch
each head / MLP from the corrupted run into the clean run), three ways:

* loop:    one full forward pass per patch (``PatchRunner.run_loop``);
* batched: the variants stacked along the batch, every one run from layer 0;
* reuse:   batched, and each variant starts at its patched layer from the cached base run, with
           the positions before the subject computed once (what the localizers use).

Prints seconds, the speed ratio against the loop, and the max abs difference of the per-prompt
metric and of the component scores (must be < 1e-4).

    python benchmarks/bench_localize.py                       # tiny 8-layer llama, 24 prompts
    python benchmarks/bench_localize.py --model default --facts 8   # embedded Gemma 3 270M
"""

from __future__ import annotations

import argparse
import time

import torch

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
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import load_model
from mechunlearn.models.scoring import encode, final_hidden
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


def compare(name: str, runners: dict[str, PatchRunner], variants, metric, score) -> None:
    results = {}
    for mode, runner in runners.items():
        hidden, seconds = timed(lambda r=runner, m=mode: r.run_loop(variants) if m == "loop" else r.run(variants))
        values = metric(hidden)  # [V, B]
        results[mode] = (values, torch.tensor([score(v) for v in values]), seconds)
    base_values, base_scores, base_seconds = results["loop"]
    print(f"\n{name}: {len(variants)} patches x {base_values.shape[1]} prompts")
    print(f"  {'mode':<8} {'seconds':>8} {'speed-up':>9} {'max |d metric|':>15} {'max |d score|':>14}")
    for mode, (values, scores, seconds) in results.items():
        d_metric = float((values - base_values).abs().max())
        d_score = float((scores - base_scores).abs().max())
        print(f"  {mode:<8} {seconds:8.2f} {base_seconds / seconds:8.1f}x {d_metric:15.2e} {d_score:14.2e}")
        assert d_score < 1e-4 and d_metric < 1e-4, f"{mode} disagrees with the loop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (8-layer random llama) or a load_model spec")
    parser.add_argument("--facts", type=int, default=None, help="prompts (default: 24 tiny, 8 otherwise)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = tiny_model("llama", n_layers=8) if args.model == "tiny" else load_model(args.model)
    facts = athletes(args.facts or (24 if args.model == "tiny" else 8))
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
    compare("causal tracing (metric: own P(true); score: recovery)", runners,
            component_variants(arch, clean, layers), lambda h: p_true(scorer, lm, h),
            lambda p: recovery(p, p_clean, p_noised))

    corrupted = random_subject_tokens(lm.tokenizer, batch.to("cpu"), 0).to(lm.device)
    with torch.no_grad(), cache_activations(lm.model, component_hook_names(layers)) as corrupt:
        ld_corrupt = scorer.read(lm.model, final_hidden(lm.model, corrupted), index, need_p=False).logit_diff
    runners = {"loop": PatchRunner(lm, batch), "batched": PatchRunner(lm, batch, resume=False),
               "reuse": PatchRunner(lm, batch, prefix=prefix)}
    ld_clean = scorer.read(lm.model, runners["loop"].base_hidden, index, need_p=False).logit_diff

    def logit_diffs(hidden):
        return torch.stack([scorer.read(lm.model, h, index, need_p=False).logit_diff for h in hidden])

    compare("activation patching (metric: logit difference; score: normalised effect)", runners,
            component_variants(arch, corrupt, layers), logit_diffs, lambda ld: normalized_effect(ld, ld_clean, ld_corrupt))


if __name__ == "__main__":
    main()
