"""Scores -> selections at an exact parameter budget (tiny llama: 4 layers, d 64, ff 128,
4 heads, 2 KV heads)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechunlearn.errors import MechunlearnError
from mechunlearn.localize import Localization, Selection, load_selection, localize, select
from mechunlearn.localize.scores import candidates, head_and_mlp_scores

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def arch(tiny_llama):
    return tiny_llama.arch


def _loc(scores, chosen=(), method="test", **evidence):
    return Localization(method, {}, ["a"], dict(scores), dict(evidence), "tiny", list(chosen))


def _size(arch, block):
    return sum(c.n_params for c in arch.matrices([0], blocks=(block,)))


def test_layer_scores_are_the_absolute_net_effect_of_the_block(arch):
    heads = {(1, 0): 0.5, (1, 1): -0.5, (1, 2): 0.2, (1, 3): 0.0}
    scores = head_and_mlp_scores(arch, heads, {1: 0.6, 2: -0.9}, attn_scores={1: -0.3})
    by_label = {c.label: c.score for c in candidates(scores, arch, "layer")}
    # attention 1: |whole block| (0.3), not the sum of |head| scores (1.2); MLPs: |score|
    assert by_label == pytest.approx({"blocks.1.attn": 0.3, "blocks.1.mlp": 0.6, "blocks.2.mlp": 0.9})
    # a layer candidate is the whole block
    layer1 = next(c for c in candidates(scores, arch, "layer") if c.label == "blocks.1.attn")
    assert layer1.components == tuple(f"blocks.1.attn.{m}" for m in "qkvo")
    # matrix granularity: every attention matrix carries the block's net score, as MLP matrices do
    by_matrix = {c.label: c.score for c in candidates(scores, arch, "matrix")}
    assert by_matrix["blocks.1.attn.q"] == pytest.approx(0.3) and by_matrix["blocks.1.attn.k"] == pytest.approx(0.3)
    assert by_matrix["blocks.2.mlp.gate"] == pytest.approx(0.9)
    # KV heads carry their query heads' |scores| (head granularity only)
    assert scores["blocks.1.attn.k.h0"] == pytest.approx(1.0) and scores["blocks.1.attn.k.h1"] == pytest.approx(0.2)
    # head granularity splits attention matrices into head slices, keeps MLP matrices whole
    by_head = {c.label: c.score for c in candidates(scores, arch, "head")}
    assert by_head["blocks.1.attn.q.h1"] == pytest.approx(0.5) and "blocks.2.mlp.in" in by_head


def test_without_a_block_score_the_layer_is_the_net_of_its_heads(arch):
    """Localizations written before the whole-block scores: |signed sum of the o head scores|."""
    scores = head_and_mlp_scores(arch, {(1, 0): 0.5, (1, 1): -0.5, (1, 2): 0.2}, {1: 0.6})
    by_label = {c.label: c.score for c in candidates(scores, arch, "layer")}
    assert by_label == pytest.approx({"blocks.1.attn": 0.2, "blocks.1.mlp": 0.6})


def test_under_never_exceeds_and_fills_with_smaller_layers(arch):
    attn, mlp = _size(arch, "attn"), _size(arch, "mlp")
    assert attn != mlp
    scores = head_and_mlp_scores(arch, {(3, 0): 0.9}, {0: 0.8, 1: 0.1})  # attn 3 > mlp 0 > mlp 1
    loc = _loc(scores)
    sel = select(loc, arch, budget=attn + mlp - 1, rule="under")
    # attention 3 fits, MLP 0 would exceed, the smaller... MLP 1 also exceeds: only attention 3
    assert sel.n_params == attn and sel.components == [f"blocks.3.attn.{m}" for m in "qkvo"]
    sel = select(loc, arch, budget=attn + mlp, rule="under")
    assert sel.n_params == attn + mlp
    assert sel.components[-3:] == ["blocks.0.mlp.in", "blocks.0.mlp.gate", "blocks.0.mlp.out"]
    assert sel.n_params == sum(arch.component(c).n_params for c in sel.components)


def test_closest_may_overshoot_by_less_than_one_candidate(arch):
    mlp = _size(arch, "mlp")
    loc = _loc(head_and_mlp_scores(arch, {}, {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.1}))
    over = select(loc, arch, budget=2 * mlp - mlp // 4, rule="closest")  # 1.75 layers -> 2 layers
    assert over.n_params == 2 * mlp and over.rule == "closest"
    under = select(loc, arch, budget=mlp + mlp // 4, rule="closest")  # 1.25 layers -> 1 layer
    assert under.n_params == mlp
    assert select(loc, arch, budget=2 * mlp - mlp // 4, rule="under").n_params == mlp
    # only the ranked order: layers 0, 1 (highest scores)
    assert {c.split(".")[1] for c in over.components} == {"0", "1"}


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 200_000), seed=st.integers(0, 50), rule=st.sampled_from(["under", "closest"]),
       granularity=st.sampled_from(["layer", "matrix", "head"]))
def test_budget_rules_hold_for_any_budget(tiny_llama, budget, seed, rule, granularity):
    arch = tiny_llama.arch
    loc = localize(tiny_llama, _dummy_facts(), "random", seed=seed)
    loc.scores.update({f"blocks.{L}.attn.{m}.h{h}": (seed * 7 + L * 3 + h) % 11 / 10
                       for L in range(4) for m in "qo" for h in range(4)})
    cands = candidates(loc.scores, arch, granularity)
    smallest = min(c.n_params(arch) for c in cands)
    if rule == "under" and budget < smallest:
        with pytest.raises(MechunlearnError, match="nothing fits"):
            select(loc, arch, budget=budget, rule=rule, granularity=granularity)
        return
    sel = select(loc, arch, budget=budget, rule=rule, granularity=granularity)
    assert sel.n_params == sum(arch.component(c).n_params for c in sel.components)
    assert len(set(sel.components)) == len(sel.components)
    if rule == "under":
        assert sel.n_params <= budget
    else:
        largest = max(c.n_params(arch) for c in cands)
        assert sel.n_params - budget < largest
        assert abs(sel.n_params - budget) <= max(budget, largest)


def _dummy_facts():
    from mechunlearn.facts import load_builtin_athletes

    facts = load_builtin_athletes()
    return facts.subset(facts.facts[:2])


def test_random_baseline_is_reproducible_and_includes_every_matrix_type(tiny_llama):
    arch = tiny_llama.arch
    a, b = (localize(tiny_llama, _dummy_facts(), "random", seed=5) for _ in range(2))
    c = localize(tiny_llama, _dummy_facts(), "random", seed=6)
    assert a.scores == b.scores and a.scores != c.scores
    budget = arch.n_trainable_matrix_params // 3
    assert select(a, arch, budget=budget).components == select(b, arch, budget=budget).components
    assert select(a, arch, budget=budget).components != select(c, arch, budget=budget).components
    assert select(a, arch, budget=budget).granularity == "matrix"
    picked = set()
    for seed in range(12):
        sel = select(localize(tiny_llama, _dummy_facts(), "random", seed=seed), arch, budget=budget)
        picked |= {name.split(".")[-1] for name in sel.components}
    assert picked == set(arch.matrix_types)  # gate included
    with pytest.raises(MechunlearnError, match="give a budget"):
        select(a, arch)
    mlps = localize(tiny_llama, _dummy_facts(), "random_mlps", seed=5)
    sel = select(mlps, arch, budget=2 * _size(arch, "mlp"))
    assert len(sel.components) == 6 and all(".mlp." in n for n in sel.components)


def test_match_uses_the_other_localizations_count(arch):
    flu = _loc(head_and_mlp_scores(arch, {}, {1: 0.3, 2: 0.2}), chosen=[f"blocks.{L}.mlp.{m}" for L in (1, 2)
                                                                          for m in ("in", "gate", "out")],
               method="fact_lookup")
    target = select(flu, arch)
    assert target.n_params == 2 * _size(arch, "mlp") and target.rule == "own choice"
    ct = _loc(head_and_mlp_scores(arch, {(L, h): 0.1 * (L + h) for L in range(4) for h in range(4)},
                                  {L: 0.05 * L for L in range(4)}), method="causal_tracing")
    for match in (flu, target):
        sel = select(ct, arch, match=match, rule="under")
        assert sel.budget == target.n_params and sel.n_params <= target.n_params
        assert "fact_lookup" in sel.note
    with pytest.raises(MechunlearnError, match="not both"):
        select(ct, arch, budget=10, match=flu)


def test_bad_requests_are_clear_errors(arch, tiny_llama):
    loc = _loc(head_and_mlp_scores(arch, {}, {0: 1.0}))
    with pytest.raises(MechunlearnError, match="granularity"):
        select(loc, arch, budget=10**6, granularity="block")
    with pytest.raises(MechunlearnError, match="rule"):
        select(loc, arch, budget=10**6, rule="over")
    with pytest.raises(MechunlearnError, match="positive"):
        select(loc, arch, budget=0)
    with pytest.raises(MechunlearnError, match="nothing fits"):
        select(loc, arch, budget=10)
    other_model = _loc({"blocks.9.mlp.in": 1.0})
    with pytest.raises(MechunlearnError, match="layer 9 out of range"):
        select(other_model, arch, budget=10**6)
    with pytest.raises(MechunlearnError, match="not a component"):
        select(_loc({"blocks.1.mlp.up": 1.0}), arch, budget=10**6)


def test_neuron_granularity_uses_neuron_scores(arch):
    scores = {"blocks.0.mlp.out": 1.0, "blocks.0.mlp.out.n3": 0.9, "blocks.0.mlp.out.n5": -0.8,
              "blocks.0.mlp.out.n7": 0.1, "blocks.1.mlp.in": 0.5}
    sel = select(_loc(scores), arch, budget=2 * arch.component("blocks.0.mlp.out.n3").n_params, granularity="neuron")
    assert sel.components == ["blocks.0.mlp.out.n3", "blocks.0.mlp.out.n5"]
    # at matrix granularity the whole-matrix score is used (not the sum over its neurons)
    by_matrix = {c.label: c.score for c in candidates(scores, arch, "matrix")}
    assert by_matrix == pytest.approx({"blocks.0.mlp.out": 1.0, "blocks.1.mlp.in": 0.5})


def test_selection_and_localization_json_round_trip(arch, tmp_path):
    loc = _loc(head_and_mlp_scores(arch, {(2, 1): 0.4}, {0: 0.3, 1: 0.2}))
    loc.save(tmp_path / "loc.json")
    sel = select(loc, arch, budget=2 * _size(arch, "mlp"))
    sel.save(tmp_path / "sel.json")
    assert Selection.load(tmp_path / "sel.json") == sel
    assert load_selection(tmp_path / "sel.json", arch) == sel
    assert load_selection(tmp_path / "loc.json", arch, budget=2 * _size(arch, "mlp")) == sel
    assert load_selection(str(tmp_path / "loc.json"), arch, match=tmp_path / "sel.json").n_params <= sel.n_params
    with pytest.raises(MechunlearnError, match="already cut"):
        load_selection(tmp_path / "sel.json", arch, budget=5)
    with pytest.raises(MechunlearnError, match="no such file"):
        load_selection(tmp_path / "missing.json", arch)
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    with pytest.raises(MechunlearnError, match="not a localization"):
        load_selection(tmp_path / "junk.json", arch)


def test_a_budget_larger_than_everything_scored_takes_all_and_says_so(arch):
    loc = _loc(head_and_mlp_scores(arch, {}, {1: 0.3}), chosen=["blocks.1.mlp.in"])
    for rule in ("under", "closest"):
        sel = select(loc, arch, budget=10**7, rule=rule)
        assert sel.n_params == _size(arch, "mlp") and "every scored layer candidate taken" in sel.note
