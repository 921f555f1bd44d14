"""The one probe stack on a tiny model with a PLANTED feature: forward hooks add a direction tied
to each fact's class to the residual stream of the upper layers only, so the truth is linearly
readable there and nowhere below. An "edit" switches the planted class of the edited facts to
their edit target. The attack's headline (mean over the upper half of the layers) must follow
the edit; the old maximum over layers must not; FLU's probe curves must rise at the right points."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate import ProbeConfig, probe_attack
from mechunlearn.facts import Fact, FactSet, Split
from mechunlearn.facts.loaders import SPORTS_ANSWERS, SPORTS_PROMPT
from mechunlearn.localize.probes import probe_curves, subject_alone
from mechunlearn.models.encoding import encode
from mechunlearn.models.hooks import hooks
from mechunlearn.models.probes import residual_names, residuals_at

SPORTS = (" football", " baseball", " basketball")
UPPER = (2, 3)  # the upper half of the tiny model's 4 layers

pytestmark = pytest.mark.usefixtures("one_thread")


def invented(n: int, seed: int) -> list[Fact]:
    """Invented athletes (no cue in the name: the model itself carries no class signal), sports in turn."""
    rng = random.Random(seed)
    facts = []
    for i in range(n):
        name = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).title()
        sport = SPORTS[i % 3]
        other = [s for s in SPORTS if s != sport][i % 2]
        facts.append(Fact(f"{seed}-{i}", name, SPORTS_PROMPT.format(subject=name), sport, other))
    return facts


def fact_set(facts, name="invented") -> FactSet:
    return FactSet(name, tuple(facts), SPORTS_ANSWERS)


@contextmanager
def planted(lm, facts: list[Fact], label: dict[str, str], layers=UPPER, scale: float = 4.0):
    """Add ``scale`` x a unit direction of class ``label[fact.id]`` to ``blocks.L.hook_resid_post``
    (L in ``layers``) at every position of the rows that are that fact's prompt or subject alone (at
    the positions after a shared prefix when the prefix runs once)."""
    d = lm.model.config.hidden_size
    classes = sorted(set(label.values()))
    basis = torch.linalg.qr(torch.randn(d, len(classes), generator=torch.Generator().manual_seed(0)))[0].T
    direction = {c: scale * basis[i] for i, c in enumerate(classes)}
    by_tokens = {}
    alone = subject_alone(lm.tokenizer, FactSet("planted", tuple(facts), None))
    for i, f in enumerate(facts):
        by_tokens[tuple(lm.tokenizer(f.prompt)["input_ids"])] = direction[label[f.id]]
        by_tokens[tuple(alone.input_ids[i, : int(alone.attention_mask[i].sum())].tolist())] = direction[label[f.id]]
    rows = {}

    def lookup(tokens: tuple) -> torch.Tensor:
        """The row's direction; a run on top of a shared prefix sees only the prompt's tail."""
        match = [v for k, v in by_tokens.items() if k[len(k) - len(tokens):] == tokens]
        return match[0] if len(match) == 1 else torch.zeros(d)

    def remember_rows(_module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        mask = mask[:, mask.shape[1] - ids.shape[1]:]  # the positions this call runs
        rows["add"] = torch.stack([lookup(tuple(r[m.bool()].tolist())) for r, m in zip(ids.cpu(), mask.cpu(), strict=True)])

    def add(act, _point):
        return act + rows["add"][:, None, :].to(act)

    handle = lm.model.base_model.register_forward_pre_hook(remember_rows, with_kwargs=True)
    try:
        with hooks(lm.model, [(f"blocks.{L}.hook_resid_post", add) for L in layers]):
            yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def world():
    facts = invented(120, seed=3)
    split = Split(fact_set(facts[:24], "forget"), fact_set(facts[:24], "forget eval"), fact_set(facts[24:96], "mt"),
                  fact_set(facts[96:], "mte"), seed=0, rule="test", mode="random")
    return facts, split


def test_the_headline_follows_an_edit_the_max_over_layers_does_not(tiny_llama, world):
    facts, split = world
    truth = {f.id: f.target_true for f in facts}
    with planted(tiny_llama, facts, truth):
        before = probe_attack(tiny_llama, split)
    edited_ids = {f.id for f in split.forget_eval}
    edit = {f.id: (f.target_new if f.id in edited_ids else f.target_true) for f in facts}
    with planted(tiny_llama, facts, edit):
        after = probe_attack(tiny_llama, split)

    accuracy = {r["layer"]: r["accuracy"] for r in before["layers"]}
    assert min(accuracy[L] for L in UPPER) >= 0.95 and max(accuracy[L] for L in (0, 1)) <= 0.7  # planted only above
    assert before["headline_layers"] == after["headline_layers"] == [2, 3]
    assert "upper half of the 4 layers" in before["headline_rule"]
    assert before["reads_true"] >= 0.9 and before["reads_target"] <= 0.1

    assert after["reads_true"] <= 0.1 and after["reads_target"] >= 0.9
    curve = {r["layer"]: r["reads_true"] for r in after["layers"]}
    assert after["reads_true"] == pytest.approx(np.mean([curve[L] for L in UPPER]))
    old_headline = max(curve.values())  # the former "reads_true_max"
    assert old_headline >= 0.2 and old_headline >= after["reads_true"] + 0.15
    assert [curve[L] for L in (0, 1)] == [r["reads_true"] for r in before["layers"][:2]]  # lower layers untouched


def test_headline_layers_are_a_config_option(tiny_llama, world):
    facts, split = world
    edited_ids = {f.id for f in split.forget_eval}
    with planted(tiny_llama, facts, {f.id: (f.target_new if f.id in edited_ids else f.target_true) for f in facts}):
        every = probe_attack(tiny_llama, split, ProbeConfig(headline="all"))
        top = probe_attack(tiny_llama, split, ProbeConfig(layers=(1, 3), headline=[3]))
        below = probe_attack(tiny_llama, split, ProbeConfig(layers=(0, 1)))
    assert every["headline_layers"] == [0, 1, 2, 3]
    assert every["reads_true"] == pytest.approx(np.mean([r["reads_true"] for r in every["layers"]]))
    assert top["headline_layers"] == [3] and top["reads_true"] == top["layers"][1]["reads_true"] <= 0.1
    assert below["headline_layers"] == [] and below["reads_true"] is None and "no headline" in below["notes"][0]
    with pytest.raises(MechunlearnError, match="not among the probed layers"):
        probe_attack(tiny_llama, split, ProbeConfig(layers=(0, 1), headline=(3,)))
    for bad in ("max", (), ("2",)):
        with pytest.raises(MechunlearnError, match="headline"):
            ProbeConfig(headline=bad)


def test_flu_probe_curves_rise_after_the_planted_block(tiny_llama, world):
    """Point l + 1 is the residual after block l: planting at blocks 2 and 3 shows at points 3 and 4,
    both for the subject alone and in the prompt (the same probe stack as the attack)."""
    facts, _ = world
    with planted(tiny_llama, facts[:60], {f.id: f.target_true for f in facts[:60]}):
        curves = probe_curves(tiny_llama, fact_set(facts[:60]))
    for curve in (curves.subject, curves.prompt):
        assert len(curve) == 5
        assert max(curve[:3]) <= 0.6 and min(curve[3:]) >= 0.95


def test_residuals_do_not_depend_on_batching(tiny_llama, world):
    facts, _ = world
    prompts = [f.prompt for f in facts[:7]] + ["A much longer prompt than the others, " * 4 + "so rows are padded"]
    batch = encode(tiny_llama.tokenizer, prompts)
    names = residual_names(tiny_llama.arch.n_layers)
    together = residuals_at(tiny_llama, batch, batch.last_index, names, batch_size=8)
    alone = residuals_at(tiny_llama, batch, batch.last_index, names, batch_size=1)
    assert set(together) == set(names) and together[names[0]].shape == (8, tiny_llama.model.config.hidden_size)
    for n in names:
        np.testing.assert_allclose(together[n], alone[n], atol=1e-5)


def test_probe_on_an_open_relation_uses_the_common_answers(tiny_llama):
    languages = [" French"] * 6 + [" English"] * 6 + [" Spanish"]
    facts = [Fact(f"m{i}", f"Person{i}", f"The mother tongue of Person{i} is", a, " Italian")
             for i, a in enumerate(languages)]
    edited = [Fact("e0", "Zed", "The mother tongue of Zed is", " French", " English"),
              Fact("e1", "Yan", "The mother tongue of Yan is", " German", " Italian")]
    open_set = lambda xs, n: FactSet(n, tuple(xs), None)  # noqa: E731
    split = Split(open_set(edited, "f"), open_set(edited, "f"), open_set(facts[:4] + facts[6:10] + facts[12:], "mt"),
                  open_set(facts[4:6] + facts[10:12], "mte"), 0, "test", "random")
    config = ProbeConfig(layers=(1,), min_per_class=2, headline="all")
    with planted(tiny_llama, [*facts, *edited], {f.id: f.target_true for f in [*facts, *edited]}, layers=(1,)):
        result = probe_attack(tiny_llama, split, config)
    assert result["classes"] == ["French", "English"]  # Spanish has one fact only
    assert result["n_readable_true"] == 1 and result["n_readable_target"] == 1  # Zed; Yan's answers are no class
    assert len(result["notes"]) == 2
    assert result["layers"][0]["accuracy"] == 1.0
    assert result["reads_true"] == result["layers"][0]["reads_true"] == 1.0  # Zed read as French
    assert result["reads_target"] == 0.0  # not as English


def test_residuals_of_the_shared_prefix_path_equal_each_prompt_run_alone(tiny, world):
    """Fact prompts share their one-shot prefix, which runs once; every residual point, at the last
    token and at an earlier one, equals the prompt's own plain forward pass (sliding-window and
    global-attention families alike)."""
    from mechunlearn.models.prefix import MIN_PREFIX, shared_prefix_length

    facts, _ = world
    batch = encode(tiny.tokenizer, [f.prompt for f in facts[:6]])
    assert shared_prefix_length(batch) >= MIN_PREFIX  # the shared path is the one under test
    names = residual_names(tiny.arch.n_layers)
    for position in (batch.last_index, batch.last_index - 2):
        shared = residuals_at(tiny, batch, position, names, batch_size=4)
        for i in range(len(batch)):
            alone = residuals_at(tiny, batch.rows(slice(i, i + 1)), position[i:i + 1], names)
            for n in names:
                np.testing.assert_allclose(shared[n][i], alone[n][0], atol=1e-5, rtol=1e-4)
