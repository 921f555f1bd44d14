"""The CUDA paths that can run without a GPU, run: the trainer under bf16 autocast (through
torch.autocast on the CPU), the memory guard's CUDA accounting (torch.cuda.mem_get_info stubbed),
and training under a device_map's dispatch hooks."""

import random

import pytest
import torch

from mechunlearn.edit import EditConfig, train
from mechunlearn.errors import MechunlearnError
from mechunlearn.facts import load_facts
from mechunlearn.facts.splits import split_facts
from mechunlearn.models import memory_guard, precision
from mechunlearn.models.loading import from_model
from mechunlearn.models.memory import Stage
from mechunlearn.models.tiny import tiny_model

COMPONENTS = ["blocks.1.mlp.out", "blocks.2.attn.q"]


@pytest.fixture(scope="module")
def split():
    facts = load_facts("sports")
    return split_facts(facts.subset(random.Random(0).sample(facts.facts, 40)), forget=4, seed=0)


def _config(**over):
    return EditConfig(objective="edit", steps=3, forget_batch_size=4, maintain_batch_size=4, general_batch_size=1,
                      general_length=16, target=None, **over)


def _trained(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_training_under_bf16_autocast_keeps_fp32_weights_and_optimizer_state(split, monkeypatch, one_thread):
    plain = tiny_model("llama", n_layers=4)
    train(plain, COMPONENTS, split, _config(), progress=False)

    # the CPU path of the autocast the trainer uses on CUDA (emulated bf16 is fine on a tiny model)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    lm = tiny_model("llama", n_layers=4)
    seen = []
    hook = lm.model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    result = train(lm, COMPONENTS, split, _config(cpu_bf16=True), progress=False)
    hook.remove()
    assert torch.bfloat16 in seen  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    after, reference = _trained(lm), _trained(plain)
    moved = after["model.layers.1.mlp.down_proj.weight"] - tiny_model("llama", n_layers=4).model.model.layers[
        1].mlp.down_proj.weight
    assert moved.abs().max() > 0
    for name in after:  # bf16 matmuls, fp32 master weights: the same edit up to bf16 rounding
        assert torch.allclose(after[name], reference[name], atol=2e-3), name


def test_the_guard_reads_cuda_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (512 << 20, 80 << 30))
    assert memory_guard.available_memory("cuda:0") == (512 << 20, "free on cuda:0")
    big = Stage("edit step", {"activations": 1 << 30}, hint="--forget-batch")
    with pytest.raises(MechunlearnError, match=r"edit step.*free on cuda:0.*--forget-batch"):
        memory_guard.check_stage(big, "cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 << 30, 80 << 30))
    memory_guard.check_stage(big, "cuda:0")  # fits


def test_training_under_device_map_hooks_equals_training_in_place(split, tmp_path, one_thread):
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    lm = tiny_model("llama", n_layers=4)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    train(lm, COMPONENTS, split, _config(), progress=False)

    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    places = ["model.embed_tokens", "model.rotary_emb", *[f"model.layers.{i}" for i in range(4)], "model.norm",
              "lm_head"]
    model = dispatch_model(model, device_map=dict.fromkeys(places, "cpu"), main_device="cpu", force_hooks=True)
    assert hasattr(model.model.layers[1], "_hf_hook")  # every block moves its inputs as on several devices
    dispatched = from_model(model, lm.tokenizer, "tiny-dispatched")
    train(dispatched, COMPONENTS, split, _config(), progress=False)
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(lm.model.named_parameters())[name]), name


def test_a_model_offloaded_to_disk_is_refused_by_name(split, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_model("llama", n_layers=4)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    places = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
              "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", device_map=places, offload_folder=tmp_path / "off",
                                                 dtype=torch.float32)
    with pytest.raises(MechunlearnError, match="offloaded to disk"):
        train(from_model(model, lm.tokenizer, "tiny-offloaded"), COMPONENTS, split, _config(), progress=False)


def test_cpu_bf16_on_a_cpu_without_native_bf16_is_refused_before_any_step(split, monkeypatch, one_thread):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    lm = tiny_model("llama", n_layers=4)
    before = _trained(lm)
    with pytest.raises(MechunlearnError, match="no native bf16.*turn cpu_bf16 off"):
        train(lm, COMPONENTS, split, _config(cpu_bf16=True), progress=False)
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
