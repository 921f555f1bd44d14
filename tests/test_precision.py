"""The ``cpu_bf16`` switch: off by default, carried by a run config into every arm's training and
its relearning attack, refused before any work on a CPU that would emulate bf16, and within the
documented tolerance of fp32 where it runs."""

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
