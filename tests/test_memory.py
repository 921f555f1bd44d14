"""The memory estimate (models/memory.py): its parts equal hand-computed values on tiny models, the
guard refuses a stage that does not fit (naming the flag that lowers it, writing nothing), and
``--dry-run`` prints the estimate without loading or writing; on the embedded model the estimate of
an edit step's peak is within 30% of the measured peak RSS."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mechunlearn.models.memory as memory
import mechunlearn.models.memory_guard as guard
from mechunlearn.cli.app import invoke
from mechunlearn.edit import EditConfig
from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.relearn import RelearnConfig
from mechunlearn.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_weights_and_trained_parts_equal_the_parameter_counts(tiny_llama):
    model = tiny_llama.model
    shape = memory.shape_of(model)
    numels = {n: p.numel() for n, p in model.named_parameters()}
    assert shape.weights == sum(numels.values()) * 4 and shape.dtype_bytes == 4
    mlp1 = sum(numels[f"model.layers.1.mlp.{m}.weight"] for m in ("up_proj", "gate_proj", "down_proj"))
    assert shape.component_params("blocks.1.mlp") == (mlp1, 0)
    q = numels["model.layers.0.self_attn.q_proj.weight"]
    # one head of q: its rows are trained, the whole q matrix gets a gradient
    trained, partial = shape.component_params("blocks.0.attn.q.h0")
    assert trained == q // shape.n_heads and partial == q
    assert shape.mlp_params() == sum(v for n, v in numels.items() if ".mlp." in n)


def test_meta_device_shape_equals_the_loaded_model(folder):
    from mechunlearn.models.loading import load_model

    meta = memory.model_shape(str(folder / "model"))
    real = memory.shape_of(load_model(str(folder / "model")).model)
    assert meta.n_params == real.n_params and meta.shapes == real.shapes
    assert meta.tokenizer_bytes == (folder / "model" / "tokenizer.json").stat().st_size * memory.TOKENIZER_FACTOR
    assert memory.model_shape(str(folder / "model"), dtype="bfloat16").weights == real.n_params * 2


def test_edit_step_parts_follow_the_batch_sizes_and_grad_accum(tiny_llama):
    s = memory.shape_of(tiny_llama.model)
    per_token = 4 * s.d_model + s.d_ff + s.n_heads * s.head_dim
    cfg = EditConfig(forget_batch_size=8, maintain_batch_size=8, general_batch_size=2, general_length=16)
    step = memory.edit_step_stage(s, cfg.resolved(False), trained=1000, partial=0, tokens=10)
    assert step.parts["trained state"] == 1000 * 4 * 4
    assert step.parts["fact activations"] == 16 * 10 * s.n_layers * per_token * 4
    assert step.parts["fact logits"] == 16 * s.vocab * 4 * 3
    assert step.parts["general logits"] == 2 * 15 * s.vocab * 4 * 3
    # the default cap of 30 steps (edit/config.py DEFAULT_STEPS): fact and general forwards, one backward each
    assert cfg.steps == 30 and step.passes == {"forward": 60, "backward": 30}
    halved = memory.edit_step_stage(s, EditConfig(forget_batch_size=8, maintain_batch_size=8, general_batch_size=2,
                                                  general_length=16, grad_accum=2).resolved(False), 1000, 0, 10)
    assert halved.parts["fact logits"] == step.parts["fact logits"] // 2
    assert halved.parts["general logits"] == step.parts["general logits"] // 2
    assert halved.passes["backward"] == 2 * step.passes["backward"]
    # a closed-set unlearning term reads only the answer columns
    closed = memory.edit_step_stage(s, EditConfig(objective="log1m", forget_over="answers").resolved(True), 0, 0, 10,
                                    closed_answers=3)
    assert closed.parts["fact logits"] == (16 * 3 + 16 * s.vocab) * 4 * 3


def test_relearn_stage_counts_the_copy_and_the_lora_adapters(tiny_llama):
    s = memory.shape_of(tiny_llama.model)
    rel = memory.relearn_stage(s, RelearnConfig(rank=4, steps=3, eval_every=1), n_forget=8, tokens=10)
    lora = sum(4 * (p.shape[0] + p.shape[1]) for n, p in tiny_llama.model.named_parameters()
               if n.endswith("proj.weight"))
    assert rel.parts["attack copy"] == s.weights and rel.parts["trained state"] == lora * 16
    assert rel.parts["fact logits"] == (4 + 4) * s.vocab * 4 * 3


def test_guard_refuses_with_the_stage_and_the_flag(tiny_llama, monkeypatch):
    s = memory.shape_of(tiny_llama.model)
    step = memory.edit_step_stage(s, EditConfig().resolved(False), 1000, 0, 10)
    monkeypatch.setattr(guard, "available_memory", lambda device=None: (step.new_bytes(True) - 1, "available RAM"))
    with pytest.raises(MechunlearnError, match=r"edit step.*--grad-accum") as e:
        guard.check_stage(step, loaded=True)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(guard, "available_memory", lambda device=None: (step.new_bytes(True), "available RAM"))
    guard.check_stage(step, loaded=True)  # exactly enough passes
    with pytest.raises(MechunlearnError, match="edit step"):  # before loading, the weights count too
        guard.check_stage(step, loaded=False)
    assert step.new_bytes(False) - step.new_bytes(True) == s.weights + s.tokenizer_bytes
    monkeypatch.setenv(memory.GUARD_ENV, "0")
    monkeypatch.setattr(guard, "available_memory", lambda device=None: (0, "available RAM"))
    guard.check_stage(step, loaded=True)


def _edit(folder: Path, out: Path, *extra) -> int:
    return invoke(["edit", "--model", str(folder / "model"), "--components", "blocks.1.mlp", "--threshold", "0",
                   "--forget", "4", "--steps", "2", "--target", "0", "--device", "cpu", "--out", str(out), *extra])


def test_edit_refuses_before_loading_when_memory_is_low(folder, monkeypatch, capsys):
    monkeypatch.setattr(guard, "available_memory", lambda device=None: (1000, "available RAM"))
    loaded = []
    monkeypatch.setattr("mechunlearn.cli.edit.open_model", lambda *a, **k: loaded.append(a))
    before = _files(folder)
    assert _edit(folder, folder / "refused") == 2
    err = capsys.readouterr().err
    assert "not enough memory" in err and "--grad-accum" in err and "available RAM" in err
    assert not loaded and _files(folder) == before


def test_edit_dry_run_prints_the_estimate_and_writes_nothing(folder, monkeypatch, capsys):
    monkeypatch.setattr("mechunlearn.cli.edit.open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    before = _files(folder)
    assert _edit(folder, folder / "dry", "--dry-run", "--steps", "7") == 0
    out = capsys.readouterr().out
    shape = memory.model_shape(str(folder / "model"))
    assert f"weights {memory.mib(shape.weights)}" in out and "edit step" in out
    assert "7 backward" in out  # 7 steps x one backward (the terms share it)
    assert _files(folder) == before


def test_run_dry_run_prints_the_estimate_and_writes_nothing(folder, monkeypatch, capsys):
    monkeypatch.setattr("mechunlearn.experiment.runner.load_model", lambda *a, **k: pytest.fail("loaded"))
    before = _files(folder)
    status = invoke(["run", "quick", "--out", str(folder / "run"), "--dry-run", "--set", f"model={folder / 'model'}",
                     "--set", "device=cpu"])
    assert status == 0
    out = capsys.readouterr().out
    assert "relearning step" in out and "edit step" in out and "cells" in out
    assert _files(folder) == before


def test_run_refuses_before_writing_the_run_folder(folder, monkeypatch, capsys):
    monkeypatch.setattr(guard, "available_memory", lambda device=None: (1000, "available RAM"))
    before = _files(folder)
    assert invoke(["run", "quick", "--out", str(folder / "run2"), "--set", f"model={folder / 'model'}",
                   "--set", "device=cpu"]) == 2
    assert "not enough memory" in capsys.readouterr().err and _files(folder) == before


MEASURE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from mechunlearn.edit import EditConfig, train
    from mechunlearn.facts import load_facts, split_facts
    from mechunlearn.models.loading import load_model

    def rss(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

    split = split_facts(load_facts("sports", None), forget=16, mode="random", seed=0)
    base = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    lm = load_model("default")
    train(lm, sys.argv[1], split, EditConfig(steps=1, target=None), progress=False)
    print(json.dumps({"peak": rss("VmHWM") - base}))
""")


@pytest.mark.integration
def test_edit_step_estimate_is_within_30_percent_of_the_measured_peak(gemma):
    components = "blocks.3..6.mlp"
    shape = memory.model_shape("default")
    trained, partial = shape.component_params(components)
    from mechunlearn.facts import load_facts

    tokens = memory.prompt_tokens([f.prompt for f in load_facts("sports", None)])
    step = memory.edit_step_stage(shape, EditConfig(steps=1).resolved(True), trained, partial, tokens)
    done = subprocess.run([sys.executable, "-c", MEASURE, components], capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    assert abs(step.total - measured) / measured < 0.30, (memory.mib(step.total), memory.mib(measured))
