"""The localized trainer on tiny models: only the selected slices move, optimizer state covers
only them, and the run is seeded, accumulation-invariant and restored on divergence."""

import math

import pytest
import torch

from mechunlearn.edit import (
    EditConfig,
    TrainableWeights,
    expand_components,
    merge_slices,
    train,
    train_sequential,
    weights_hash,
)
from mechunlearn.edit.data import StepSampler, fact_term, micro_batches
from mechunlearn.edit.objectives import OBJECTIVES, FactObjective
from mechunlearn.errors import FactDataError, MechunlearnError, TrainingDivergedError
from mechunlearn.facts import Fact, FactSet, answer_probs, sequential_blocks, split_facts
from mechunlearn.facts.loaders import SPORTS_ANSWERS, SPORTS_PROMPT
from mechunlearn.models.encoding import encode
from mechunlearn.models.tiny import tiny_model

NAMES = ["Alan Brook", "Ben Carter", "Cal Dorn", "Dan Ellis", "Eve Ford", "Fay Gold", "Gus Hale", "Hal Irwin",
         "Ian Jory", "Jo Kent", "Kim Lane", "Lou Marsh", "Max Nell", "Ned Oak", "Oli Park", "Pat Quinn"]
SPORTS = ("football", "baseball", "basketball")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_athletes() -> FactSet:
    facts = tuple(
        Fact(n, n, SPORTS_PROMPT.format(subject=n), f" {SPORTS[i % 3]}", f" {SPORTS[(i + 1) % 3]}")
        for i, n in enumerate(NAMES)
    )
    return FactSet("tiny athletes", facts, SPORTS_ANSWERS)


def sharp_tiny(family: str = "llama", seed: int = 0):
    """A tiny model whose unembedding is scaled up so that it can be confident at all (random
    0.02-std weights cap every logit near 0)."""
    lm = tiny_model(family, seed=seed)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(30)
    return lm


def golf_split(seed: int = 0):
    """Half of the basketball players edited to golf (one shared target a tiny model can learn)."""
    return split_facts(tiny_athletes(), mode="category", category="basketball", new_target="golf", seed=seed)


def quick(**kw) -> EditConfig:
    return EditConfig(**{"steps": 3, "lr": 1e-2, "maintain_batch_size": 4, "general_length": 16, **kw})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def selected_mask(model, slices) -> dict[str, torch.Tensor]:
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for s in slices:
        s.view(masks[s.param]).fill_(True)
    return masks


# --- component names ------------------------------------------------------------------------
def test_expand_components_shorthands(tiny_llama):
    arch = tiny_llama.arch
    assert expand_components(arch, "blocks.1.mlp") == ["blocks.1.mlp.in", "blocks.1.mlp.gate", "blocks.1.mlp.out"]
    assert expand_components(arch, "blocks.2.attn") == [f"blocks.2.attn.{m}" for m in "qkvo"]
    assert len(expand_components(arch, "blocks.0..3.mlp")) == 12
    assert len(expand_components(arch, "blocks.1")) == 7
    names = expand_components(arch, "blocks.1.mlp.in, blocks.1.mlp, blocks.2.attn.q.h1")
    assert names == ["blocks.1.mlp.in", "blocks.1.mlp.gate", "blocks.1.mlp.out", "blocks.2.attn.q.h1"]
    for bad in ("blocks.9.mlp", "blocks.3..1.mlp", "blocks.1.mlp.up", "", "mlp.1"):
        with pytest.raises(MechunlearnError):
            expand_components(arch, bad)


def test_merge_slices_unions_overlaps_and_adjacent_units(tiny_llama):
    arch = tiny_llama.arch
    whole = arch.component("blocks.1.mlp.in")
    merged = merge_slices([whole, arch.component("blocks.1.mlp.in.n5")])
    assert merged == list(whole.slices)
    heads = merge_slices([arch.component("blocks.0.attn.q.h1"), arch.component("blocks.0.attn.q.h2")])
    assert [(s.start, s.stop) for s in heads] == [(arch.d_head, 3 * arch.d_head)]
    apart = merge_slices([arch.component("blocks.0.attn.q.h0"), arch.component("blocks.0.attn.q.h2")])
    assert len(apart) == 2


# --- data -----------------------------------------------------------------------------------
def test_step_sampler_covers_every_item_each_epoch():
    sampler = StepSampler(10, 4, torch.Generator().manual_seed(0))
    drawn = [i for _ in range(5) for i in sampler.next()]  # 20 = two epochs
    assert sorted(drawn) == sorted(list(range(10)) * 2)
    assert StepSampler(3, 8, torch.Generator()).next() == [0, 1, 2]
    parts = micro_batches(list(range(10)), rank=1, world=2, n_micro=2)
    assert sorted(i for p in parts for i in p) == [1, 3, 5, 7, 9]


def test_fact_term_rejects_missing_targets(tiny_llama):
    facts = tiny_athletes()
    no_target = facts.subset([f.with_target(None) for f in facts])
    with pytest.raises(FactDataError, match="no edit target"):
        fact_term(tiny_llama.tokenizer, no_target, "new")
    term = fact_term(tiny_llama.tokenizer, facts, "true", over="answers")
    assert term.columns is not None and len(term.columns) == 4
    assert term.targets.tolist() == [i % 3 for i in range(len(facts))]
    with pytest.raises(MechunlearnError, match="closed answer set"):
        fact_term(tiny_llama.tokenizer, FactSet("open", facts.facts, None), "true", over="answers")


def test_config_validation():
    for bad in ({"objective": "nope"}, {"steps": 0}, {"lr": 0}, {"c_forget": -1}, {"forget_over": "x"},
                {"warmup": 5, "steps": 5}, {"mask_threshold": 2.0}):
        with pytest.raises(MechunlearnError):
            EditConfig(**bad).validate()
    config = EditConfig(lr=3e-4, weight_mask=True)
    assert EditConfig.from_json(config.to_json()) == config
    with pytest.raises(MechunlearnError, match="unknown edit config"):
        EditConfig.from_json({"lr": 1e-4, "learning_rate": 1})
    # unlearning a closed answer set is scored over the answers unless asked otherwise
    assert EditConfig(objective="edit").resolve_forget_over(closed=True) == "vocab"
    assert EditConfig(objective="log1m").resolve_forget_over(closed=True) == "answers"
    assert EditConfig(objective="npo").resolve_forget_over(closed=False) == "vocab"
    assert EditConfig(objective="log1m", forget_over="vocab").resolve_forget_over(closed=True) == "vocab"
    resolved = EditConfig(objective="log1m").resolved(closed=True)
    assert (resolved.c_forget, resolved.forget_over) == (0.2, "answers")  # the recorded, concrete values
    assert EditConfig(objective="edit").resolved(closed=True).c_forget == 1.0
    assert EditConfig(objective="edit", c_forget=3.0).resolved(closed=True).c_forget == 3.0


# --- the trainer ----------------------------------------------------------------------------
def test_only_selected_slices_train_and_optimizer_state_is_twice_their_size(tiny):
    arch = tiny.arch
    names = ["blocks.1.mlp.in", "blocks.2.attn.q.h1", "blocks.0.mlp.out.n5", "blocks.3.attn.v"]
    expected = sum(arch.component(n).n_params for n in names)
    before = snapshot(tiny.model)
    flags = {n: p.requires_grad for n, p in tiny.model.named_parameters()}
    try:
        result = train(tiny, names, golf_split(), quick(), progress=False)
        assert result.n_trained_params == expected
        assert result.optimizer_state_numel == 2 * expected
        masks = selected_mask(tiny.model, result.slices)
        assert sum(int(m.sum()) for m in masks.values()) == expected
        for name, p in tiny.model.named_parameters():
            frozen = ~masks[name]
            assert torch.equal(p.detach()[frozen], before[name][frozen]), f"{name} changed outside the selection"
        for s in result.slices:
            moved = s.view(tiny.model.get_parameter(s.param).detach()) != s.view(before[s.param])
            assert moved.float().mean() > 0.5, f"{s} barely trained"
        assert {n: p.requires_grad for n, p in tiny.model.named_parameters()} == flags
        assert all(p.grad is None for p in tiny.model.parameters())
    finally:
        with torch.no_grad():
            for n, p in tiny.model.named_parameters():
                p.copy_(before[n])


def football_split(seed: int = 0):
    """Half of the football players: the answer the random sharp tiny model already favours
    (P ~ 0.87 over the answer set), so there is something to unlearn."""
    return split_facts(tiny_athletes(), mode="category", category="football", seed=seed)


ALONE = {"c_maintain": 0, "c_general": 0}  # the forget term alone: a tiny random model cannot tell
# athletes apart, so the maintain term would fight it


def test_edit_moves_the_forget_facts_to_the_new_target():
    split = golf_split()
    lm = sharp_tiny()
    _, p0_new = answer_probs(lm.model, lm.tokenizer, split.forget)
    result = train(lm, "blocks.1..3.mlp", split, quick(steps=12, lr=2e-2, **ALONE), progress=False)
    _, p_new = answer_probs(lm.model, lm.tokenizer, split.forget)
    assert p0_new.mean() < 0.4 and p_new.mean() > 0.8, (p0_new, p_new)
    assert result.history[-1]["forget"] < 0.5 * result.history[0]["forget"]


@pytest.mark.parametrize("objective", ["log1m", "grad_ascent", "npo"])
def test_unlearning_objectives_lower_p_true(objective):
    split = football_split()
    lm = sharp_tiny()
    p0, _ = answer_probs(lm.model, lm.tokenizer, split.forget)
    config = quick(objective=objective, steps=8, lr=2e-2, forget_over="answers", **ALONE)
    result = train(lm, "blocks.1..3.mlp", split, config, progress=False)
    p1, _ = answer_probs(lm.model, lm.tokenizer, split.forget)
    assert p0.mean() > 0.7 and p1.mean() < 0.3, (p0, p1)
    assert result.history[-1]["forget"] < result.history[0]["forget"]


def test_log1m_cutoff_silences_facts_already_unlikely():
    """Over the full vocabulary the tiny model gives every sport log p < -5: log1m has nothing
    to do, so the weights do not move."""
    lm = sharp_tiny()
    before = snapshot(lm.model)
    result = train(lm, "blocks.1.mlp", football_split(), quick(objective="log1m", forget_over="vocab", **ALONE),
                   progress=False)
    assert all(h["forget"] == 0 and h["grad_norm"] == 0 for h in result.history)
    assert all(torch.equal(p.detach(), before[n]) for n, p in lm.model.named_parameters())


def test_gradient_accumulation_gives_the_same_update():
    """Same losses; same weights up to float noise (Adam's g / sqrt(v) can amplify the noise of
    a near-zero gradient entry, so the bound is 1% of one step's lr)."""
    split = golf_split()
    weights, histories = [], []
    for accum in (1, 3):
        lm = sharp_tiny()
        config = quick(grad_accum=accum, maintain_batch_size=6, general_batch_size=3)
        histories.append(train(lm, "blocks.1.mlp,blocks.2.attn.q.h0", split, config, progress=False).history)
        weights.append(snapshot(lm.model))
    for h1, h3 in zip(*histories, strict=True):
        for key in ("forget", "maintain", "general", "grad_norm"):
            assert h3[key] == pytest.approx(h1[key], rel=1e-4)
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=1e-4, rtol=0)


def test_one_vocabulary_pass_gives_each_terms_plain_forward_loss_and_gradient():
    """The step projects forget, maintain and general-text rows to the vocabulary together; its
    terms and gradients equal the model's own logits and LM loss, term by term."""
    import torch.nn.functional as F

    from mechunlearn.edit.objectives import get_objective
    from mechunlearn.edit.step import LossTerms
    from mechunlearn.facts.general_text import general_windows

    lm = sharp_tiny()
    split = golf_split()
    config = quick(c_forget=0.7, c_maintain=1.3, c_general=0.5).resolved(True)
    objective, maintain = get_objective("edit"), get_objective("maintain")
    forget = fact_term(lm.tokenizer, split.forget, "new", "vocab")
    keep = fact_term(lm.tokenizer, split.maintain_train, "true", "answers")  # a closed set beside the vocabulary
    windows = general_windows(lm.tokenizer, None, 16, 3, 0, part="train")
    terms = LossTerms(lm.model, lm.tokenizer, config, objective, maintain, forget, keep, windows)
    drawn = {"forget": [0, 1, 2], "maintain": [1, 3], "general": [0, 2]}
    weight = lm.model.get_parameter("model.layers.1.mlp.up_proj.weight")
    sums = terms.backward(drawn, 0, 1)
    ours = weight.grad.clone()
    weight.grad = None

    def last(prompts):
        batch = encode(lm.tokenizer, prompts)
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[
            torch.arange(len(prompts)), batch.last_index].float()

    f_loss = F.cross_entropy(last([forget.prompts[i] for i in drawn["forget"]]), forget.targets[drawn["forget"]],
                             reduction="none")
    closed = last([keep.prompts[i] for i in drawn["maintain"]])[:, keep.columns]
    m_loss = F.cross_entropy(closed, keep.targets[drawn["maintain"]], reduction="none")
    g = windows[drawn["general"]]
    g_logits = lm.model(input_ids=g).logits[:, :-1].float()
    g_loss = F.cross_entropy(g_logits.flatten(0, 1), g[:, 1:].flatten(), reduction="none").view(2, -1).mean(-1)
    torch.testing.assert_close(sums.float(), torch.stack([f_loss.sum(), m_loss.sum(), g_loss.sum()]).detach(),
                               atol=1e-4, rtol=1e-4)
    (0.7 * f_loss.mean() + 1.3 * m_loss.mean() + 0.5 * g_loss.mean()).backward()
    assert weight.grad.abs().max() > 0
    torch.testing.assert_close(ours, weight.grad, atol=1e-4 * weight.grad.abs().max().item(), rtol=0)


def test_runs_are_seeded():
    split = golf_split()
    runs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        lm = sharp_tiny()
        train(lm, "blocks.1.mlp", split, quick(seed=seed, maintain_batch_size=2), progress=False)
        runs[key] = lm.model.get_parameter("model.layers.1.mlp.up_proj.weight").detach().clone()
    assert torch.equal(runs["a"], runs["b"])
    assert not torch.equal(runs["a"], runs["c"])


def test_schedule_warms_up_then_decays_to_zero():
    lm = sharp_tiny()
    result = train(lm, "blocks.1.mlp.in", golf_split(), quick(steps=6, warmup=2, lr=1e-2, c_general=0),
                   progress=False)
    lrs = [h["lr"] for h in result.history]
    assert lrs[:3] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    expected_last = 1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 4))
    assert lrs[-1] == pytest.approx(expected_last)
    assert "general" not in result.history[0]
    assert all(h["grad_norm"] > 0 for h in result.history)


def test_divergence_names_step_and_term_and_restores_weights(monkeypatch):
    calls = {"n": 0}

    def nan_on_second_step(batch, config):
        calls["n"] += 1
        loss = -batch.target_logp()
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setitem(OBJECTIVES, "edit", FactObjective("edit", "forget", "new", nan_on_second_step))
    lm = sharp_tiny()
    before = snapshot(lm.model)
    with pytest.raises(TrainingDivergedError, match=r"step 2/3: the forget loss is nan"):
        train(lm, "blocks.1.mlp,blocks.2.attn.k.h0", golf_split(), quick(), progress=False)
    for name, p in lm.model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
        assert p.grad is None


def test_weight_mask_variant_scales_weights_in_place(tiny_llama):
    lm = sharp_tiny()
    before = snapshot(lm.model)
    config = quick(weight_mask=True, lr=0.05, steps=4, mask_l1=0.0)
    result = train(lm, "blocks.1.mlp.in,blocks.2.attn.q.h1", golf_split(), config, progress=False)
    assert result.optimizer_state_numel == 2 * result.n_trained_params
    masks = selected_mask(lm.model, result.slices)
    for s in result.slices:
        now, w0 = s.view(lm.model.get_parameter(s.param).detach()), s.view(before[s.param])
        ratio = now[w0 != 0] / w0[w0 != 0]
        assert ratio.min() >= -1e-6 and ratio.max() <= 1 + 1e-6  # W = W0 * M with M in [0, 1]
        assert (ratio < 0.99).any()
    for name, p in lm.model.named_parameters():
        assert torch.equal(p.detach()[~masks[name]], before[name][~masks[name]])
    assert 0 < result.history[-1]["mask_mean"] < 1

    lm = sharp_tiny()
    config = quick(weight_mask=True, lr=0.05, steps=4, mask_l1=0.0, mask_threshold=0.5)
    result = train(lm, "blocks.1.mlp.in", golf_split(), config, progress=False)
    s = result.slices[0]
    now, w0 = s.view(lm.model.get_parameter(s.param).detach()), s.view(before[s.param])
    assert torch.all((now == 0) | (now == w0))


@pytest.mark.parametrize("mask", [False, True])
def test_weights_set_between_two_snapshots_move_only_the_selection(mask):
    """What the target band's walk-back uses: the selected slices (whole matrices, a head's rows,
    or a mask) put on the line between two snapshots, everything else untouched."""
    lm = sharp_tiny()
    names = ["blocks.1.mlp.in", "blocks.2.attn.q.h1"]
    weights = TrainableWeights(lm.model, [lm.arch.component(n) for n in names], mask=mask)
    weights.activate()
    try:
        start = weights.snapshot()
        with torch.no_grad():
            for t in weights.tensors:
                t.mul_(0.5)
        weights.after_step()  # the model now holds the end point
        end = weights.snapshot()
        before = snapshot(lm.model)
        weights.set_between(start, end, 0.25)
        chosen = selected_mask(lm.model, weights.slices)
        for s in weights.slices:
            now, was = s.view(lm.model.get_parameter(s.param).detach()), s.view(before[s.param])
            assert torch.allclose(now, was * 1.75, atol=1e-6)  # end = start / 2, so 0.875 x start = 1.75 x end
        for name, p in lm.model.named_parameters():
            assert torch.equal(p.detach()[~chosen[name]], before[name][~chosen[name]])
    finally:
        weights.deactivate()


def test_mask_l1_penalty_keeps_weights():
    """A strong L1 pull toward M = 1 keeps more of the weights than none."""
    kept = {}
    for l1 in (0.0, 1.0):
        lm = sharp_tiny()
        result = train(lm, "blocks.1.mlp.in", golf_split(), quick(weight_mask=True, lr=0.05, steps=4, mask_l1=l1),
                       progress=False)
        kept[l1] = result.history[-1]["mask_mean"]
    assert kept[1.0] > kept[0.0]


def test_sequential_editing_keeps_the_original_base_hash():
    facts = tiny_athletes()
    blocks = sequential_blocks(facts, n_blocks=2, block_size=3, seed=0)
    assert len({f.id for b in blocks for f in b.forget}) == 6
    assert blocks[0].maintain_train == blocks[1].maintain_train
    lm = sharp_tiny()
    base = weights_hash(lm.model)
    results = train_sequential(lm, "blocks.1.mlp", blocks, quick(), progress=False)
    assert [r.base_hash for r in results] == [base, base]
    assert weights_hash(lm.model) != base
    assert [r.split["forget"] for r in results] == [[f.id for f in b.forget] for b in blocks]


def test_shared_prefix_pass_matches_a_full_pass(tiny):
    """The trainer runs the prompts' common prefix once; values and gradients must not change."""
    from mechunlearn.models.encoding import encode, final_hidden
    from mechunlearn.models.prefix import final_hidden_shared, shared_prefix_length

    prompts = [f.prompt for f in tiny_athletes()][:5] + ["Fact: Tiger Woods plays the sport of golf\nFact: Al"]
    batch = encode(tiny.tokenizer, prompts)
    prefix = shared_prefix_length(batch)
    assert 4 <= prefix <= int(batch.last_index.min())
    assert (batch.input_ids[:, :prefix] == batch.input_ids[0, :prefix]).all()
    weight = tiny.model.get_parameter(tiny.arch.component("blocks.1.mlp.in").slices[0].param)
    project = torch.randn(tiny.arch.d_model, 3, generator=torch.Generator().manual_seed(0))
    out = []
    for fn in (final_hidden, final_hidden_shared):
        hidden = fn(tiny.model, batch)
        (grad,) = torch.autograd.grad((hidden @ project).pow(2).sum(), weight)
        out.append((hidden.detach(), grad))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-4 * out[0][1].abs().max().item(), rtol=0)
    assert out[0][1].abs().max() > 0


def test_general_text_from_a_file_or_built_in(tiny_llama, tmp_path):
    from mechunlearn.facts.general_text import general_windows

    built_in = general_windows(tiny_llama.tokenizer, None, 16)
    assert built_in.shape[1] == 16 and built_in.shape[0] > 20
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the city river music {i} was on the river\n\n" for i in range(20)))
    windows = general_windows(tiny_llama.tokenizer, str(text), 8)
    assert windows.shape[1] == 8 and (windows[:, 0] == tiny_llama.tokenizer.bos_token_id).all()
    with pytest.raises(FactDataError, match="no such text file"):
        general_windows(tiny_llama.tokenizer, str(tmp_path / "missing.txt"), 8)
    text.write_text("short\n\nshort too")
    with pytest.raises(FactDataError, match="fewer than one window"):
        general_windows(tiny_llama.tokenizer, str(text), 64)
    with pytest.raises(MechunlearnError, match="'datasets' package|cannot load general text"):  # offline tests
        general_windows(tiny_llama.tokenizer, "hf:no-such/dataset", 8)


def write_workspace(lm, root):
    """A saved model (root/base) and the tiny athletes as a fact table (root/facts.csv), for CLI tests."""
    import pandas as pd

    lm.model.save_pretrained(root / "base")
    lm.tokenizer.save_pretrained(root / "base")
    rows = [{"subject": f.subject, "prompt": f.prompt, "target_true": f.target_true.strip(),
             "target_new": f.target_new.strip()} for f in tiny_athletes()]
    pd.DataFrame(rows).to_csv(root / "facts.csv", index=False)
    return root
