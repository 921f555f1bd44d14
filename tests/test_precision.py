"""The ``cpu_bf16`` switch: off by default, carried by a run config into every arm's training and
its relearning attack, refused before any work on a CPU that would emulate bf16, and within the
documented tolerance of fp32 where it runs."""

import importlib
import random

import pytest
import torch

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.relearn import RelearnConfig, relearn
from mechunlearn.experiment import Experiment, load_config
from mechunlearn.facts import load_facts
from mechunlearn.facts.splits import split_facts
from mechunlearn.models import precision
from mechunlearn.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_config_carries_cpu_bf16_into_training_and_relearning(tiny_grid):
    off = load_config(str(tiny_grid()))
    on = load_config(str(tiny_grid(cpu_bf16=True)))
    setting = on.settings[0]
    assert off.cpu_bf16 is False
    assert off.edit_config("random", setting, 0).cpu_bf16 is False
    assert off.eval_config(setting, 0).relearn.cpu_bf16 is False
    assert on.edit_config("random", setting, 0).cpu_bf16 is True
    assert on.eval_config(setting, 0).relearn.cpu_bf16 is True


def test_a_run_with_cpu_bf16_on_a_cpu_without_it_stops_before_writing(tiny_grid, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(MechunlearnError, match="no native bf16"):
        Experiment(load_config(str(tiny_grid(cpu_bf16=True))), out).run()
    assert not out.exists()


def test_relearning_in_bf16_stays_near_fp32_and_evaluates_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    facts = load_facts("sports")
    split = split_facts(facts.subset(random.Random(1).sample(facts.facts, 40)), forget=6, seed=0)
    config = dict(rank=4, steps=3, eval_every=1, n_general=1, general_length=16, lr=1e-3)
    plain = relearn(tiny_model("llama", n_layers=4), split, RelearnConfig(**config))
    lm = tiny_model("llama", n_layers=4)
    seen = []
    hook = lm.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cast = relearn(lm, split, RelearnConfig(**config, cpu_bf16=True))
    hook.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen  # steps in bf16, evaluations in fp32
    assert cast["curve"][0] == plain["curve"][0]  # before any step: the same fp32 evaluation
    assert cast["losses"] != plain["losses"]
    for a, b in zip(cast["curve"], plain["curve"], strict=True):
        assert a["p_true"] == pytest.approx(b["p_true"], abs=0.01)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bf16_copies_of_frozen_weights_give_exactly_the_steps_autocast_gave(monkeypatch):
    """The copies are cast once per training instead of at every use; the numbers are the same
    bit for bit, and outside a step the model holds its own fp32 weights."""
    from mechunlearn.edit import EditConfig, train

    trainer = importlib.import_module("mechunlearn.edit.trainer")
    relearn_module = importlib.import_module("mechunlearn.evaluate.attacks.relearn")

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    facts = load_facts("sports")
    split = split_facts(facts.subset(random.Random(1).sample(facts.facts, 40)), forget=6, seed=0)
    edit = EditConfig(objective="edit", steps=3, lr=1e-3, cpu_bf16=True, general_length=16)
    attack = RelearnConfig(rank=4, steps=3, eval_every=1, n_general=1, general_length=16, lr=1e-3, cpu_bf16=True)
    runs = {}
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(trainer, "frozen_bf16", lambda *a: None)
            monkeypatch.setattr(relearn_module, "frozen_bf16", lambda *a: None)
        lm = tiny_model("llama", n_layers=4)
        before = {n: p for n, p in lm.model.named_parameters()}
        frozen_weight = []  # the dtype a frozen matrix multiplies with
        hook = lm.model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda m, i, o, seen=frozen_weight: seen.append(m.weight.dtype))
        result = train(lm, ["blocks.1.mlp.out", "blocks.2.attn.q.h0"], split, edit, progress=False)
        hook.remove()
        assert (torch.bfloat16 in frozen_weight) == cached and torch.float32 in frozen_weight
        assert {n: p for n, p in lm.model.named_parameters()} == before  # the same fp32 Parameters back
        assert all(p.dtype == torch.float32 for p in lm.model.parameters())
        runs[cached] = (result.history, _weights(lm.model), relearn_module.relearn(lm, split, attack))
    (hist_a, w_a, rel_a), (hist_b, w_b, rel_b) = runs[True], runs[False]
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert rel_a["losses"] == rel_b["losses"] and rel_a["curve"] == rel_b["curve"]


def test_the_memory_estimate_counts_the_bf16_copies():
    from dataclasses import replace

    from mechunlearn.edit import EditConfig
    from mechunlearn.models.memory import ModelShape, bf16_copies, edit_step_stage, relearn_stage

    shape = ModelShape(n_params=1000, dtype_bytes=4, n_layers=2, d_model=8, d_ff=16, n_heads=2, head_dim=4, vocab=50,
                       tokenizer_bytes=0)
    fp32, bf16 = EditConfig().resolved(True), EditConfig(cpu_bf16=True).resolved(True)
    copies = edit_step_stage(shape, bf16, 10, 0, 8).total - edit_step_stage(shape, fp32, 10, 0, 8).total
    assert copies == bf16_copies(shape) == 2000
    attack = RelearnConfig(method="full")
    assert (relearn_stage(shape, replace(attack, cpu_bf16=True), 4, 8).total
            - relearn_stage(shape, attack, 4, 8).total) == 2000
