"""Localization on tiny models: patching engine, methods, evidence. Budget rules are in
test_localize_budget.py; the embedded model in test_localize_integration.py."""

import copy

import pytest
import torch
from scipy.stats import spearmanr

from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import FactSet, load_builtin_athletes
from mechunlearn.facts.records import Fact
from mechunlearn.localize import METHODS, Localization, localize, select
from mechunlearn.localize.attribution import unit_attributions
from mechunlearn.localize.causal_tracing import p_true
from mechunlearn.localize.corruption import embedding_noise, random_subject_tokens
from mechunlearn.localize.fact_lookup import choose_layers, monotone_envelope
from mechunlearn.localize.metrics import AnswerScorer, normalized_effect
from mechunlearn.localize.patching import (
    Patch,
    PatchRunner,
    Variant,
    component_hook_names,
    component_variants,
    final_norm,
    head_output_fn,
    shared_prefix,
)
from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves
from mechunlearn.localize.probes import ProbeCurves
from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.hooks import cache_activations, patch_activations

PREFIX = "Fact: the sport of golf and the river city music is "


pytestmark = pytest.mark.usefixtures("one_thread")


def _facts(n_per_sport: int = 4) -> FactSet:
    """Built-in athletes, a few of each sport, behind a long shared prefix (so the shared-prefix
    path and Gemma's sliding window (8) are exercised)."""
    every = load_builtin_athletes()
    by_sport: dict[str, list[Fact]] = {}
    for f in every:
        by_sport.setdefault(f.target_true, []).append(f)
    chosen = [f for fs in by_sport.values() for f in fs[:n_per_sport]]
    return every.subset([Fact(f.id, f.subject, PREFIX + f.prompt, f.target_true, f.target_new, f.relation)
                         for f in chosen])


def _batch(lm, facts):
    return encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts])


def _noise_hook(lm, batch, seed=0):
    noise = embedding_noise((*batch.input_ids.shape, lm.arch.d_model), batch.subject_mask, 1.0, 3.0, seed)[0]
    return [("hook_embed", lambda act, _p: act + noise)]


def _clean_cache(lm, batch, names):
    with torch.no_grad(), cache_activations(lm.model, names) as cache:
        hidden = final_hidden(lm.model, batch)
    return cache, hidden


def activation_patching(lm, facts, seed=0):
    """Exact activation patching, the reference attribution patching approximates: each head's
    hook_z slice, each whole hook_z (the attention block) and each hook_mlp_out of the run with
    random subject tokens written into the clean run. Labels ``blocks.L.attn.hH``,
    ``blocks.L.attn``, ``blocks.L.mlp`` -> normalised logit-difference effect."""
    scorer, index, layers = AnswerScorer(lm.tokenizer, facts), torch.arange(len(facts)), range(lm.arch.n_layers)
    batch = _batch(lm, facts)
    corrupt, hidden = _clean_cache(lm, random_subject_tokens(lm.tokenizer, batch, seed), component_hook_names(layers))
    ld_corrupt = scorer.read(lm.model, hidden, index, need_p=False).logit_diff
    runner = PatchRunner(lm, batch, prefix=shared_prefix(batch))
    ld_clean = scorer.read(lm.model, runner.base_hidden, index, need_p=False).logit_diff
    variants = component_variants(lm.arch, corrupt, layers)
    variants += [Variant(f"blocks.{L}.attn", (Patch(f"blocks.{L}.attn.hook_z", corrupt[f"blocks.{L}.attn.hook_z"]),))
                 for L in layers]
    return {v.label: normalized_effect(scorer.read(lm.model, h, index, need_p=False).logit_diff, ld_clean, ld_corrupt)
            for v, h in zip(variants, runner.run(variants), strict=True)}


# --- the patching engine ----------------------------------------------------------------------
def test_batched_variants_equal_one_forward_per_patch(tiny):
    facts = _facts(2)
    batch = _batch(tiny, facts)
    layers = range(tiny.arch.n_layers)
    clean, _ = _clean_cache(tiny, batch, component_hook_names(layers))
    variants = component_variants(tiny.arch, clean, layers)
    variants = [v for i, v in enumerate(variants) if i % 3 == 0]  # heads and MLPs of every layer
    assert {v.start_layer for v in variants} == set(layers) and any("mlp" in v.label for v in variants)
    # one variant patching two layers, one restricted to subject positions
    variants.append(Variant("mixed", (Patch("blocks.1.hook_mlp_out", clean["blocks.1.hook_mlp_out"], batch.subject_mask),
                                      Patch("blocks.3.attn.hook_z", clean["blocks.3.attn.hook_z"], None, (0, 2)))))
    prefix = shared_prefix(batch)
    assert prefix > 8  # longer than tiny Gemma's sliding window
    runner = PatchRunner(tiny, batch, _noise_hook(tiny, batch), max_rows=10, prefix=prefix)
    batched, loop = runner.run(variants), runner.run_loop(variants)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    # the variants really differ from the noised base run and from each other
    assert (batched - runner.base_hidden).abs().amax() > 1e-3
    assert (batched[0] - batched[-1]).abs().amax() > 1e-4


def test_skipped_layers_do_not_run_and_come_back(tiny_llama):
    lm = tiny_llama
    batch = _batch(lm, _facts(1))
    layers = lm.model.get_submodule(lm.arch.layers_path)
    originals = list(layers)
    calls = []
    handle = layers[0].register_forward_hook(lambda *_: calls.append(1))  # test-only probe of the engine
    try:
        runner = PatchRunner(lm, batch)
        calls.clear()
        clean, _ = _clean_cache(lm, batch, ["blocks.2.hook_mlp_out"])
        calls.clear()
        runner.run([Variant("v", (Patch("blocks.2.hook_mlp_out", clean["blocks.2.hook_mlp_out"] * 0),))])
        assert calls == []
        runner.run_loop([Variant("v", (Patch("blocks.2.hook_mlp_out", clean["blocks.2.hook_mlp_out"] * 0),))])
        assert calls == [1]
    finally:
        handle.remove()
    assert list(layers) == originals


def test_patching_the_whole_residual_equals_the_other_run(tiny):
    facts = _facts(2)
    batch = _batch(tiny, facts)
    corrupted = random_subject_tokens(tiny.tokenizer, batch, seed=0)
    name = "blocks.2.hook_resid_pre"
    corrupt_cache, corrupt_hidden = _clean_cache(tiny, corrupted, [name])
    runner = PatchRunner(tiny, batch)
    patched = runner.run([Variant("all", (Patch(name, corrupt_cache[name]),))])[0]
    torch.testing.assert_close(patched, corrupt_hidden, atol=1e-5, rtol=0)


def test_zero_patch_of_an_mlp_equals_zeroed_weights(tiny_llama):
    lm = tiny_llama
    batch = _batch(lm, _facts(2))
    L = 1
    name = f"blocks.{L}.hook_mlp_out"
    clean, _ = _clean_cache(lm, batch, [name])
    patched = PatchRunner(lm, batch).run([Variant("zero", (Patch(name, torch.zeros_like(clean[name])),))])[0]
    manual = copy.deepcopy(lm.model)
    for s in lm.arch.component(f"blocks.{L}.mlp.out").slices:
        s.view(manual.get_parameter(s.param)).data.zero_()
    with torch.no_grad():
        expected = final_hidden(manual, batch)
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=0)


def test_head_output_fn_and_final_norm_match_the_model(tiny):
    batch = _batch(tiny, _facts(1))
    n = tiny.arch.n_layers
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out", f"blocks.{n - 1}.hook_resid_post"]
    cache, hidden = _clean_cache(tiny, batch, names)
    with torch.no_grad():
        torch.testing.assert_close(head_output_fn(tiny, 1)(cache[names[0]]), cache[names[1]], atol=1e-5, rtol=0)
        rows = torch.arange(len(batch))
        final = final_norm(tiny)(cache[names[2]])[rows, batch.last_index]
    torch.testing.assert_close(final, hidden, atol=1e-5, rtol=0)


# --- corruption and metrics ---------------------------------------------------------------------
def test_subject_corruption_is_seeded_and_only_touches_the_subject(tiny_llama):
    batch = _batch(tiny_llama, _facts(3))
    a = random_subject_tokens(tiny_llama.tokenizer, batch, seed=1)
    b = random_subject_tokens(tiny_llama.tokenizer, batch, seed=1)
    c = random_subject_tokens(tiny_llama.tokenizer, batch, seed=2, pool="vocab")
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    changed = a.input_ids != batch.input_ids
    assert not changed[~batch.subject_mask].any()
    assert changed[batch.subject_mask].float().mean() > 0.9
    special = set(tiny_llama.tokenizer.all_special_ids)
    assert not any(int(t) in special for t in c.input_ids[batch.subject_mask])
    with pytest.raises(MechunlearnError):
        random_subject_tokens(tiny_llama.tokenizer, batch, seed=0, pool="nonsense")


def test_answer_scorer_closed_and_open(tiny_llama):
    lm = tiny_llama
    facts = _facts(2)
    batch = _batch(lm, facts)
    with torch.no_grad():
        hidden = final_hidden(lm.model, batch)
        full = lm.model.lm_head(hidden)
    index = torch.arange(len(facts))
    scorer = AnswerScorer(lm.tokenizer, facts)
    out = scorer.read(lm.model, hidden, index)
    ids = scorer.answer_ids
    sub = full[:, ids]
    pos = scorer.true_pos
    torch.testing.assert_close(out.p_true, sub.softmax(-1)[index, pos])
    others = (sub.sum(1) - sub[index, pos]) / (len(ids) - 1)
    torch.testing.assert_close(out.logit_diff, sub[index, pos] - others)
    open_facts = FactSet("open", facts.facts, None)
    out = AnswerScorer(lm.tokenizer, open_facts).read(lm.model, hidden, index)
    t = torch.tensor([lm.tokenizer.encode(f.target_true)[0] for f in facts])
    n = torch.tensor([lm.tokenizer.encode(f.target_new)[0] for f in facts])
    torch.testing.assert_close(out.p_true, full.softmax(-1)[index, t])
    torch.testing.assert_close(out.logit_diff, full[index, t] - full[index, n])


# --- methods ------------------------------------------------------------------------------------
def test_attribution_patching_approximates_activation_patching(tiny_llama):
    facts = _facts(4)
    exact = activation_patching(tiny_llama, facts, seed=0)
    totals, ld = unit_attributions(tiny_llama, facts, 0, 16, "subjects", ("attn", "mlp"))
    effect = float((ld["corrupt"] - ld["clean"]).sum())
    approx = {f"blocks.{L}.attn.h{h}": float(totals[f"blocks.{L}.attn.o"][h]) / effect
              for L in range(tiny_llama.arch.n_layers) for h in range(tiny_llama.arch.n_heads)}
    approx |= {f"blocks.{L}.mlp": float(totals[f"blocks.{L}.mlp.out"].sum()) / effect
               for L in range(tiny_llama.arch.n_layers)}
    approx |= {f"blocks.{L}.attn": float(totals[f"blocks.{L}.attn.o"].sum()) / effect  # whole block: signed sum
               for L in range(tiny_llama.arch.n_layers)}
    keys = sorted(exact)
    rho = spearmanr([exact[k] for k in keys], [approx[k] for k in keys]).statistic
    assert rho > 0.8, rho


def test_a_head_the_metric_cannot_depend_on_scores_zero(tiny_llama):
    lm = copy.deepcopy(tiny_llama)
    L, h = 1, 2
    for s in lm.arch.component(f"blocks.{L}.attn.o.h{h}").slices:
        s.view(lm.model.get_parameter(s.param)).data.zero_()
    facts = _facts(3)
    exact = activation_patching(lm, facts, seed=0)
    loc = localize(lm, facts, "attribution_patching")
    assert exact[f"blocks.{L}.attn.h{h}"] == pytest.approx(0.0, abs=1e-5)
    for m in ("q", "o"):
        assert loc.scores[f"blocks.{L}.attn.{m}.h{h}"] == pytest.approx(0.0, abs=1e-6)
    assert abs(exact[f"blocks.{L}.attn.h{(h + 1) % 4}"]) > 1e-3
    assert abs(loc.scores[f"blocks.{L}.attn.o.h{(h + 1) % 4}"]) > 1e-3


def test_causal_tracing_restoring_every_component_recovers_p_clean(tiny):
    facts = _facts(2)
    batch = _batch(tiny, facts)
    layers = range(tiny.arch.n_layers)
    clean, hidden = _clean_cache(tiny, batch, component_hook_names(layers))
    scorer = AnswerScorer(tiny.tokenizer, facts)
    p_clean = p_true(scorer, tiny, hidden)
    runner = PatchRunner(tiny, batch, _noise_hook(tiny, batch), prefix=shared_prefix(batch))
    everything = Variant("all", tuple(p for v in component_variants(tiny.arch, clean, layers) for p in v.patches))
    p_noised = p_true(scorer, tiny, runner.base_hidden)
    p_restored = p_true(scorer, tiny, runner.run([everything])[0])
    assert (p_noised - p_clean).abs().max() > 1e-3
    # the noise stays only on the subject tokens' residual; the last token's is fully restored
    torch.testing.assert_close(p_restored, p_clean, atol=1e-5, rtol=0)


def test_causal_tracing_is_seeded(tiny_llama):
    facts = _facts(2)
    a = localize(tiny_llama, facts, "causal_tracing", seed=3)
    b = localize(tiny_llama, facts, "causal_tracing", seed=3)
    c = localize(tiny_llama, facts, "causal_tracing_mlps", seed=4, n_noise=2)
    assert a.scores == b.scores
    assert set(c.scores) == {k for k in a.scores if ".mlp." in k}
    assert all(a.scores[k] != c.scores[k] for k in c.scores)
    assert a.evidence["p_noised"] != c.evidence["p_noised"]
    assert a.evidence["sigma"] == pytest.approx(c.evidence["sigma"])
    arch = tiny_llama.arch
    assert set(a.scores) >= {f"blocks.{L}.attn.{m}.h0" for L in range(arch.n_layers) for m in "qkvo"}
    # KV heads carry the summed |score| of their query heads (4 heads, 2 KV heads)
    for L in range(arch.n_layers):
        q = [a.scores[f"blocks.{L}.attn.q.h{h}"] for h in range(4)]
        assert a.scores[f"blocks.{L}.attn.k.h1"] == pytest.approx(abs(q[2]) + abs(q[3]))


def test_fact_lookup_evidence_and_choice(tiny):
    facts = _facts(4)
    loc = localize(tiny, facts, "fact_lookup")
    ev = loc.evidence
    n = tiny.arch.n_layers
    assert 1 <= ev["receiver_layer"] < n
    assert set(ev["mlp_path_patching"]) == {str(layer) for layer in range(ev["receiver_layer"])}
    assert len(ev["extraction_heads"]) == n * tiny.arch.n_heads
    probes = ev["probes"]
    assert len(probes["subject"]) == len(probes["prompt"]) == n + 1
    assert probes["classes"] == ["football", "baseball", "basketball"] and probes["n_facts"] == 12
    assert ev["flu_layers"] and all(layer < ev["receiver_layer"] for layer in ev["flu_layers"])
    assert loc.chosen and all(".mlp." in c for c in loc.chosen)
    sel = select(loc, tiny.arch)
    assert sel.components == loc.chosen and sel.rule == "own choice"
    assert "aggregation" in ev and "rule" in ev


def test_fact_lookup_can_probe_on_more_facts(tiny_llama):
    facts, more = _facts(2), _facts(6)
    loc = localize(tiny_llama, facts, "fact_lookup", probe_facts=more)
    assert loc.evidence["probes"]["n_facts"] == 18 and loc.evidence["probes"]["chance"] == pytest.approx(1 / 3)
    assert loc.params["probe_facts"]["fact_ids"] == [f.id for f in more]
    assert loc.fact_ids == [f.id for f in facts]
    with pytest.raises(MechunlearnError, match="must be a FactSet"):
        localize(tiny_llama, facts, "fact_lookup", probe_facts=["a"])


# The demo's seed: MLP 3 dominates, seven marginal MLPs pass the absolute 0.02 (receiver layer 11).
DEMO_MLPS = {0: 0.01, 1: 0.05, 2: 0.03, 3: 0.47, 4: -0.01, 5: 0.10, 6: 0.04, 7: 0.02, 8: 0.0, 9: 0.06, 10: 0.03}
FLU_RULE = {"threshold": 0.02, "relative": 0.25, "min_probe_gain": 0.2, "plateau": 0.8}


def _curve(subject: list[float]) -> ProbeCurves:
    return ProbeCurves(["a", "b", "c"], 96, 1 / 3, subject, subject, 5)


def test_flu_keeps_the_dominant_mlp_not_the_marginal_ones():
    layers, rule, numbers = choose_layers(DEMO_MLPS, None, **FLU_RULE)
    assert layers == [3]  # the absolute 0.02 alone took 1, 2, 3, 5, 6, 7, 9, 10
    assert numbers["cut"] == pytest.approx(0.25 * 0.47) and "0.25 x the largest" in rule
    assert choose_layers(DEMO_MLPS, None, **{**FLU_RULE, "relative": 0.0})[0] == [1, 2, 3, 5, 6, 7, 9, 10]
    assert choose_layers({**DEMO_MLPS, 2: 0.3}, None, **FLU_RULE)[0] == [2, 3]  # an MLP of the same order stays
    assert choose_layers({0: 0.01, 1: -0.2, 2: 0.015}, None, **FLU_RULE)[0] == [2]  # none passes: the best alone


def test_flu_plateau_uses_the_monotone_envelope_of_the_probe_curve():
    """An early spike that falls back (point 2) must not cut the lookup short: the envelope first
    reaches 80% of its gain at point 6 (after block 5), so MLP 3 stays and MLP 9 goes."""
    spiky = [0.33, 0.36, 0.85, 0.45, 0.5, 0.7, 0.9, 0.95, 0.95, 0.93, 0.94, 0.95, 0.94]
    envelope = monotone_envelope(spiky)
    assert all(b >= a for a, b in zip(envelope, envelope[1:], strict=False))
    assert monotone_envelope(sorted(spiky)) == pytest.approx(sorted(spiky))  # a monotone curve is its own envelope
    layers, rule, numbers = choose_layers(DEMO_MLPS, _curve(spiky), **FLU_RULE)
    assert numbers["plateau_point"] == 6 and numbers["last_layer"] == 5
    assert layers == [3] and "up to MLP 5" in rule
    # the raw curve's first crossing (point 2) would have left MLPs 0-1 only
    assert next(p for p, a in enumerate(spiky) if a >= 1 / 3 + 0.8 * (0.95 - 1 / 3)) == 2
    late = [0.33, 0.34, 0.36, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.95, 0.95, 0.95]  # decodable only after block 8
    assert choose_layers(DEMO_MLPS, _curve(late), **FLU_RULE)[0] == [3]
    early = [0.33, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]  # decodable after block 0
    layers, rule, _ = choose_layers(DEMO_MLPS, _curve(early), **FLU_RULE)
    assert layers == [0] and "nothing passed" in rule  # MLP 0 is all that precedes the plateau
    flat = [0.33, 0.4, 0.45, 0.38, 0.4, 0.42, 0.41, 0.4, 0.39, 0.4, 0.41, 0.4, 0.4]
    layers, rule, numbers = choose_layers(DEMO_MLPS, _curve(flat), **FLU_RULE)
    assert layers == [3] and "probes not used" in rule and "plateau_point" not in numbers


def test_every_method_runs_saves_and_plots(tiny_llama, tmp_path):
    facts = _facts(3)
    for method in METHODS:
        loc = localize(tiny_llama, facts, method, seed=1)
        assert loc.fact_ids == [f.id for f in facts] and loc.method == method
        path = loc.save(tmp_path / f"{method}.json")
        again = Localization.load(path)
        assert again == loc
        plot_heatmap(loc, tmp_path / f"{method}.png")
        assert (tmp_path / f"{method}.png").stat().st_size > 1000
        if method == "fact_lookup":
            plot_probe_curves(loc, tmp_path / "probes.png")
            assert (tmp_path / "probes.png").stat().st_size > 1000
        if method.endswith("_mlps"):
            assert all(".mlp." in k for k in loc.scores)
    with pytest.raises(MechunlearnError, match="unknown localization method"):
        localize(tiny_llama, facts, "nope")
    with pytest.raises(MechunlearnError, match="unknown parameter"):
        localize(tiny_llama, facts, "causal_tracing", noise=3)


def test_patch_activations_and_runner_agree_on_a_resid_patch(tiny_llama):
    """FLU's path patch (an added delta at the subject positions of resid_pre L*) equals the
    same edit made by the hook layer's patch_activations in one full forward pass."""
    lm = tiny_llama
    batch = _batch(lm, _facts(2))
    name = "blocks.2.hook_resid_pre"
    clean, _ = _clean_cache(lm, batch, [name])
    source = clean[name] + torch.randn(clean[name].shape, generator=torch.Generator().manual_seed(0))
    runner = PatchRunner(lm, batch, prefix=shared_prefix(batch))
    batched = runner.run([Variant("d", (Patch(name, source, batch.subject_mask),))])[0]
    with torch.no_grad(), patch_activations(lm.model, {name: source}, positions=batch.subject_mask):
        expected = final_hidden(lm.model, batch)
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=0)


def test_methods_work_on_open_vocabulary_facts(tiny_llama):
    """CounterFact-like facts (no closed answer set): full-vocabulary P(true), logit difference
    against the edit target, probes on the most frequent answers."""
    closed = _facts(4)
    facts = FactSet("open", closed.facts, None)
    for method in ("fact_lookup", "causal_tracing_mlps", "attribution_patching"):
        loc = localize(tiny_llama, facts, method)
        assert loc.scores and all(v == v for v in loc.scores.values())  # no NaN
    flu = localize(tiny_llama, facts, "fact_lookup").evidence
    assert "edit target" in flu["metric"]
    assert flu["probes"]["classes"] == ["football", "baseball", "basketball"]  # each has >= 4 facts
    few = FactSet("open", closed.facts[:6], None)  # 2 per answer: too few to probe
    loc = localize(tiny_llama, few, "fact_lookup")
    assert loc.evidence["probes"] is None and loc.evidence["probe_note"]
    assert "probes" not in loc.evidence["rule"] and loc.chosen


def test_a_corruption_without_effect_is_an_error(tiny_llama):
    lm = copy.deepcopy(tiny_llama)
    lm.model.lm_head.weight.data.zero_()  # every logit 0: nothing can change the metric
    for method in ("fact_lookup", "causal_tracing_mlps", "attribution_patching"):
        with pytest.raises(MechunlearnError, match="does not change"):
            localize(lm, _facts(2), method)
