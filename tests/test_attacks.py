"""Attacks on tiny random models: they leave the evaluated model unchanged, relearning of facts
the model never knew does not spread to other facts, a probe finds a planted linear feature,
soft prompts stay inside their bound and do move the answer."""

import random

import pytest
import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate import (
    ProbeConfig,
    RelearnConfig,
    SoftPromptConfig,
    attack_halves,
    probe_attack,
    relearn,
    softprompt_attack,
)
from mechunlearn.facts import Fact, FactSet, Split, split_facts
from mechunlearn.facts.loaders import SPORTS_ANSWERS, SPORTS_PROMPT
from mechunlearn.models.encoding import encode
from mechunlearn.models.scoring import last_token_logits

SPORTS = (" football", " baseball", " basketball")
ANSWERS4 = (*SPORTS, " golf")
CUES = {" football": "river", " baseball": "music", " basketball": "city", " golf": "their"}  # tiny-tokenizer words


pytestmark = pytest.mark.usefixtures("one_thread")


def made_up(n: int, seed: int, cue: bool = False, labels: list[str] | None = None) -> list[Fact]:
    """Invented athletes, sports in turn (or ``labels``); with ``cue`` the subject ends in a word
    tied to its sport: a linear feature the residual stream carries."""
    rng = random.Random(seed)
    facts = []
    for i in range(n):
        sport = labels[i] if labels else SPORTS[i % 3]
        name = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).title()
        subject = f"{name} {CUES[sport]}" if cue else name
        other = [s for s in SPORTS if s != sport][i % 2]
        facts.append(Fact(f"{seed}-{i}", subject, SPORTS_PROMPT.format(subject=subject), sport, other))
    return facts


def fact_set(facts, name="made up") -> FactSet:
    return FactSet(name, tuple(facts), SPORTS_ANSWERS)


def make_split(forget, forget_eval, maintain_train, maintain_test) -> Split:
    return Split(fact_set(forget, "forget"), fact_set(forget_eval, "forget eval"), fact_set(maintain_train, "mt"),
                 fact_set(maintain_test, "mte"), seed=0, rule="test", mode="random")


@pytest.fixture(scope="module")
def small_split():
    facts = made_up(30, seed=1)
    return make_split(facts[:6], facts[:6], facts[6:24], facts[24:])


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, [p.requires_grad for p in model.parameters()]


def assert_unchanged(model, before):
    state, flags = before
    after = model.state_dict()
    assert list(after) == list(state)
    changed = [k for k, v in after.items() if not torch.equal(v, state[k])]
    assert not changed, f"attack changed {changed[:3]}"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_lora_relearning_leaves_every_family_unchanged(tiny, small_split):
    before = snapshot(tiny.model)
    result = relearn(tiny, small_split, RelearnConfig(rank=4, steps=2, eval_every=1, lr=1e-2))
    assert_unchanged(tiny.model, before)
    assert [p["step"] for p in result["curve"]] == [0, 1, 2]
    assert result["losses"][0] != result["losses"][-1]  # the copy did train


def test_relearning_loss_and_gradients_equal_the_models_own_full_forward(tiny, small_split):
    """The relearning step (shared-prefix pass, vocabulary read at the last token only) computes
    the loss and LoRA gradients of a plain forward pass: the model's own logits and LM loss."""
    import torch.nn.functional as F

    from mechunlearn.evaluate.attacks.common import model_copy, true_token_ids
    from mechunlearn.evaluate.attacks.relearn import RelearnLoss, _trainable
    from mechunlearn.facts.general_text import general_windows
    from mechunlearn.models.prefix import shared_prefix_length

    model = model_copy(tiny).model
    params = _trainable(model, RelearnConfig(rank=4))
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters an effect of their own
        for p in params:
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    facts = [*small_split.forget.facts[:3], *small_split.maintain_train.facts[:2]]
    batch = encode(tiny.tokenizer, [f.prompt for f in facts])
    assert shared_prefix_length(batch) >= 4  # the shared-prefix path is the one under test
    targets = true_token_ids(tiny.tokenizer, fact_set(facts))
    windows = general_windows(tiny.tokenizer, None, 16, 2, 0, part="train")
    ours = RelearnLoss(batch, targets, 3, windows)(model)

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    last = logits[torch.arange(len(facts)), batch.last_index].float()
    per_fact = F.cross_entropy(last, targets, reduction="none")
    reference = per_fact[:3].mean() + per_fact[3:].mean() + model(input_ids=windows, labels=windows).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    ref_grads = torch.autograd.grad(reference, params)
    assert max(g.abs().max() for g in ref_grads) > 0
    for g, g_ref in zip(torch.autograd.grad(ours, params), ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-4 * g_ref.abs().max().item() + 1e-8, rtol=0)


def test_softprompt_loss_and_gradient_equal_the_models_own_full_forward(tiny_llama, small_split):
    """The soft-prompt loss runs the prompts' shared prefix once; the perturbation of the prefix
    tokens must still count, in the loss and in its gradient."""
    import torch.nn.functional as F

    from mechunlearn.evaluate.attacks.common import answer_columns
    from mechunlearn.evaluate.attacks.softprompt import _loss_fn, perturb_embeddings

    lm, facts = tiny_llama, small_split.forget
    v = torch.randn(lm.arch.d_model, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with perturb_embeddings(lm.model, v):
        ours = _loss_fn(lm, facts)()
        batch = encode(lm.tokenizer, [f.prompt for f in facts])
        ids, columns = answer_columns(lm.tokenizer, facts)
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        reference = F.cross_entropy(logits[torch.arange(len(facts)), batch.last_index][:, ids].float(), columns)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    (g,), (g_ref,) = torch.autograd.grad(ours, [v]), torch.autograd.grad(reference, [v])
    assert g_ref.abs().max() > 0
    torch.testing.assert_close(g, g_ref, atol=1e-4 * g_ref.abs().max().item(), rtol=0)


def test_full_relearning_probe_and_softprompt_leave_the_model_unchanged(tiny_llama, small_split):
    batch = encode(tiny_llama.tokenizer, [f.prompt for f in small_split.forget])
    with torch.no_grad():
        logits = last_token_logits(tiny_llama.model, batch)
    before = snapshot(tiny_llama.model)
    relearn(tiny_llama, small_split, RelearnConfig(method="full", steps=2, lr=1e-3))
    probe_attack(tiny_llama, small_split, ProbeConfig(layers=(0, 3)))
    softprompt_attack(tiny_llama, small_split, SoftPromptConfig(steps=2, restarts=1))
    assert_unchanged(tiny_llama.model, before)
    with torch.no_grad():  # and no hook was left behind
        assert torch.equal(last_token_logits(tiny_llama.model, batch), logits)


def test_attack_halves_split_shared_facts_and_keep_held_out_ones(small_split):
    train, held_out, _ = attack_halves(small_split, seed=0)
    assert len(train) == len(held_out) == 3
    assert {f.id for f in train} | {f.id for f in held_out} == {f.id for f in small_split.forget}
    assert not {f.id for f in train} & {f.id for f in held_out}
    assert [f.id for f in attack_halves(small_split, seed=0)[0]] == [f.id for f in train]
    disjoint = make_split(small_split.forget.facts[:3], small_split.forget.facts[3:], small_split.maintain_train.facts,
                          small_split.maintain_test.facts)
    train, held_out, _ = attack_halves(disjoint, seed=0)
    assert [f.id for f in train] == [f.id for f in disjoint.forget]
    assert [f.id for f in held_out] == [f.id for f in disjoint.forget_eval]


@pytest.mark.parametrize("cue", [True, False])
def test_relearning_brings_back_only_what_the_model_carries(tiny_llama, cue):
    """With a sport-linked word in every name (a "fact" the model's activations carry), training
    on half the facts brings the other half back; facts the model never knew do not come back
    (answers balanced over all four sports, so learning the answer set is no help)."""
    facts = made_up(24, seed=2, cue=cue, labels=list(ANSWERS4) * 6)
    split = make_split(facts[:8], facts[8:16], facts[16:21], facts[21:])
    config = RelearnConfig(method="full", lr=3e-3, steps=40, eval_every=10, n_maintain=2)
    result = relearn(tiny_llama, split, config)
    assert [p["step"] for p in result["curve"]] == [0, 10, 20, 30, 40]
    assert result["train_p_true_after"] > 0.7  # it fitted the facts it trained on
    assert set(result["eval_facts"]) == {f.id for f in facts[8:16]}
    assert result["relearning_error"] == pytest.approx(1 - result["p_true_after"])
    if cue:
        assert result["p_true_after"] > result["p_true_before"] + 0.3
    else:
        assert result["p_true_after"] < result["p_true_before"] + 0.1


def test_two_relearning_folds_score_every_edited_fact_once(tiny_llama):
    """``folds: 2``: the first fold is the one-fold attack itself; the second trains on the half the
    first scored and scores the half it trained on; every pooled number is the mean over all the
    edited facts. An edit evaluated on held-out facts has no halves to swap."""
    facts = made_up(24, seed=2, cue=True, labels=list(ANSWERS4) * 6)
    split = make_split(facts[:10], facts[:10], facts[16:21], facts[21:])
    config = RelearnConfig(method="full", lr=3e-3, steps=10, eval_every=5, n_maintain=2)
    one = relearn(tiny_llama, split, config)
    two = relearn(tiny_llama, split, RelearnConfig(**{**config.__dict__, "folds": 2}))
    first, second = two["folds"]
    assert first["curve"] == one["curve"] and first["eval_facts"] == one["eval_facts"]
    assert second["eval_facts"] == first["train_facts"] and second["train_facts"] == first["eval_facts"]
    assert sorted(two["eval_facts"]) == sorted(f.id for f in facts[:10]) and len(two["rows"]) == 10
    assert two["p_true_after"] == pytest.approx(sum(r["p_true"] for r in two["rows"]) / 10, abs=1e-9)
    assert two["relearning_error"] == pytest.approx(1 - two["p_true_after"])
    n1, n2 = len(first["eval_facts"]), len(second["eval_facts"])
    for i, step in enumerate([0, 5, 10]):
        pooled = (first["curve"][i]["p_true"] * n1 + second["curve"][i]["p_true"] * n2) / (n1 + n2)
        assert two["curve"][i]["step"] == step and two["curve"][i]["p_true"] == pytest.approx(pooled, abs=1e-9)
    assert "halves swapped" in two["halves"] and "folds" not in one
    with pytest.raises(MechunlearnError, match="held-out facts"):
        relearn(tiny_llama, make_split(facts[:8], facts[8:16], facts[16:21], facts[21:]),
                RelearnConfig(method="full", steps=1, folds=2))
    with pytest.raises(MechunlearnError, match="folds must be 1 or 2"):
        RelearnConfig(folds=3)


def test_probe_reads_a_planted_linear_feature(tiny_llama):
    facts = made_up(120, seed=3, cue=True)
    split = make_split(facts[:12], facts[:12], facts[12:90], facts[90:])
    result = probe_attack(tiny_llama, split)
    assert [r["layer"] for r in result["layers"]] == [0, 1, 2, 3]
    assert max(r["accuracy"] for r in result["layers"]) >= 0.9
    assert result["reads_true_best"] >= 0.75
    assert result["reads_target_best"] <= 0.25
    assert result["classes"] == ["football", "baseball", "basketball"]

    rng = random.Random(0)  # control: labels unrelated to the cue cannot be read
    shuffled = [Fact(f.id, f.subject, f.prompt, t, f.target_new if f.target_new != t else [s for s in SPORTS if s != t][0])
                for f, t in zip(facts, [rng.choice(SPORTS) for _ in facts], strict=True)]
    control = probe_attack(tiny_llama, make_split(shuffled[:12], shuffled[:12], shuffled[12:90], shuffled[90:]))
    assert max(r["accuracy"] for r in control["layers"]) <= 0.6


def test_probe_needs_two_classes(tiny_llama):
    facts = made_up(12, seed=4, labels=[" football"] * 12)
    with pytest.raises(MechunlearnError, match="2 answer classes"):
        probe_attack(tiny_llama, make_split(facts[:2], facts[:2], facts[2:10], facts[10:]))


def test_softprompt_stays_in_its_bound_and_moves_the_answer(tiny_llama):
    # every edited fact has the same true answer, so one universal vector can bring it back
    facts = made_up(16, seed=5, labels=[" basketball"] * 8 + list(SPORTS) * 2 + [" football", " baseball"])
    split = make_split(facts[:8], facts[:8], facts[8:14], facts[14:])
    config = SoftPromptConfig(steps=30, lr=0.1, restarts=2, max_norm_ratio=1.0)
    result = softprompt_attack(tiny_llama, split, config)
    assert len(result["restarts"]) == 2
    assert all(r["norm"] <= result["bound"] * (1 + 1e-5) for r in result["restarts"])
    assert result["p_true_after"]["train"] > result["p_true_before"]["train"] + 0.1
    assert result["restarts"][0]["losses"][-1] < result["restarts"][0]["losses"][0]
    again = softprompt_attack(tiny_llama, split, config)
    assert again["p_true_after"] == pytest.approx(result["p_true_after"])  # seeded


def test_attack_configs_reject_bad_values():
    with pytest.raises(MechunlearnError):
        RelearnConfig(method="sgd")
    with pytest.raises(MechunlearnError):
        RelearnConfig(steps=0)
    with pytest.raises(MechunlearnError):
        ProbeConfig(train_on="everything")
    with pytest.raises(MechunlearnError):
        SoftPromptConfig(max_norm_ratio=0)


def test_probe_can_train_on_half_of_the_edited_facts(tiny_llama):
    from mechunlearn.facts import load_facts

    athletes = load_facts("sports")
    split = split_facts(athletes.subset(random.Random(0).sample(athletes.facts, 40)), forget=8, seed=0)
    result = probe_attack(tiny_llama, split, ProbeConfig(layers=(2,), train_on="maintain+forget_half"))
    train, held_out, _ = attack_halves(split, 0)
    assert result["edited_facts"] == [f.id for f in held_out]
    assert result["n_train"] == sum(1 for f in [*split.maintain_train, *train] if f.target_true.strip() in result["classes"])
    assert probe_attack(tiny_llama, split, ProbeConfig(layers=(2,)))["train_on"] == "maintain"


def test_probe_after_a_whole_category_edit_learns_that_category_from_half_of_it(tiny_llama):
    from mechunlearn.facts import load_facts

    athletes = load_facts("sports")
    sample = athletes.subset(random.Random(0).sample(athletes.facts, 60))
    split = split_facts(sample, mode="category", category="basketball", new_target="golf", seed=0)
    result = probe_attack(tiny_llama, split, ProbeConfig(layers=(2,)))  # maintain has no basketball player
    assert result["train_on"] == "maintain+forget_half"
    assert "basketball" in result["classes"]
    assert result["edited_facts"] == [f.id for f in split.forget_eval]
    assert result["n_readable_true"] == len(split.forget_eval)
    assert result["n_readable_target"] == 0  # nobody plays golf in the training data: reported, not guessed
    assert result["layers"][0]["reads_target"] is None
