"""Saving an edit: an HF checkpoint that loads, a small diff that rebuilds the edit exactly from
the base (and refuses another base), all-or-nothing output, and the two CLI commands."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from mechunlearn.cli.app import app
from mechunlearn.edit import (
    EditConfig,
    apply_diff,
    read_diff,
    save_edit,
    train,
    train_sequential,
    weights_hash,
)
from mechunlearn.edit import saving as saving_module
from mechunlearn.errors import MechunlearnError
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import load_model
from mechunlearn.models.tiny import tiny_model
from test_edit import golf_split, quick, sequential_blocks, tiny_athletes, write_workspace

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = "blocks.1.mlp.in,blocks.2.attn.q.h1"


def _edited(seed: int = 0):
    lm = tiny_model("llama", seed=seed)
    result = train(lm, COMPONENTS, golf_split(), quick(), progress=False)
    return lm, result


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_saved_model_loads_and_diff_rebuilds_it_exactly(tmp_path):
    lm, result = _edited()
    out = save_edit(lm, result, tmp_path / "edit", base_spec="tiny-llama", facts={"dataset": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["diff.safetensors", "model", "train_log.json"]

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    batch = encode(lm.tokenizer, [f.prompt for f in golf_split().forget])
    with torch.no_grad():
        a = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(a, b)

    diff = read_diff(out / "diff.safetensors")
    assert diff.components == result.components and diff.base_model == "tiny-llama"
    assert sum(t.numel() for t in diff.tensors.values()) == result.n_trained_params
    model_bytes = (out / "model" / "model.safetensors").stat().st_size
    assert (out / "diff.safetensors").stat().st_size < 0.15 * model_bytes

    base = tiny_model("llama", seed=0)
    assert weights_hash(base.model) == result.base_hash
    rebuilt = apply_diff(base, out / "diff.safetensors")
    edited = _state(lm.model)
    for name, tensor in rebuilt.model.state_dict().items():
        assert torch.equal(tensor, edited[name]), name

    log = json.loads((out / "train_log.json").read_text())
    assert {"model", "components", "n_trained_params", "config", "facts", "split", "history", "seconds"} <= set(log)
    assert log["model"] == "tiny-llama" and log["n_trained_params"] == result.n_trained_params
    assert log["config"] == result.config.to_json() and len(log["history"]) == result.config.steps
    assert log["split"]["forget"] == [f.id for f in golf_split().forget]


def test_diff_refuses_another_base(tmp_path):
    lm, result = _edited()
    out = save_edit(lm, result, tmp_path / "edit")
    with pytest.raises(MechunlearnError, match="other base weights"):
        apply_diff(tiny_model("llama", seed=1), out / "diff.safetensors")
    with pytest.raises(MechunlearnError, match="has no parameter"):
        apply_diff(tiny_model("gpt2", seed=0), out / "diff.safetensors", verify=False)
    with pytest.raises(MechunlearnError, match="no such diff"):
        read_diff(tmp_path / "missing.safetensors")


def test_sequential_edit_saves_one_diff_from_the_original_base(tmp_path):
    lm = tiny_model("llama")
    results = train_sequential(lm, "blocks.1.mlp", sequential_blocks(tiny_athletes(), 2, 3), quick(), progress=False)
    out = save_edit(lm, results, tmp_path / "seq")
    log = json.loads((out / "train_log.json").read_text())
    assert [h["block"] for h in log["history"]] == [1, 1, 1, 2, 2, 2]
    rebuilt = apply_diff(tiny_model("llama"), out / "diff.safetensors")
    assert all(torch.equal(p, lm.model.get_parameter(n)) for n, p in rebuilt.model.named_parameters())


def test_nothing_is_written_when_saving_fails(tmp_path, monkeypatch):
    lm, result = _edited()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(saving_module, "write_diff", broken)
    with pytest.raises(OSError):
        save_edit(lm, result, tmp_path / "edit")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_write_over_the_base_model_or_a_foreign_folder(tmp_path):
    base_dir = tmp_path / "base"
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(base_dir)
    tiny.tokenizer.save_pretrained(base_dir)
    lm = load_model(str(base_dir))
    result = train(lm, "blocks.1.mlp.in", golf_split(), quick(steps=1), progress=False)
    for bad in (base_dir, base_dir / "edit", tmp_path):
        with pytest.raises(MechunlearnError, match="base model's files"):
            save_edit(lm, result, bad)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(MechunlearnError, match="not empty"):
        save_edit(lm, result, foreign)
    assert (foreign / "todo.txt").read_text() == "keep me"


# --- CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_on_disk(tmp_path_factory):
    return write_workspace(tiny_model("llama"), tmp_path_factory.mktemp("cli"))


def _edit_args(root, out, *extra):
    return ["edit", "--model", str(root / "base"), "--dataset", "table", "--data", str(root / "facts.csv"),
            "--threshold", "0", "--forget", "4", "--steps", "2", "--general-length", "16", "--out", str(out), *extra]


def test_cli_edit_then_apply_diff_rebuilds_the_model(tiny_on_disk):
    runner = CliRunner()
    out = tiny_on_disk / "edit"
    result = runner.invoke(app, _edit_args(tiny_on_disk, out, "--components", "blocks.1.mlp,blocks.0.attn.v.h0"))
    assert result.exit_code == 0, result.output
    log = json.loads((out / "train_log.json").read_text())
    assert log["components"] == ["blocks.1.mlp.in", "blocks.1.mlp.gate", "blocks.1.mlp.out", "blocks.0.attn.v.h0"]
    assert log["facts"]["dataset"] == "table" and len(log["split"]["forget"]) == 4 and len(log["history"]) == 2

    rebuilt = tiny_on_disk / "rebuilt"
    result = runner.invoke(app, ["apply-diff", str(out / "diff.safetensors"), "--out", str(rebuilt)])
    assert result.exit_code == 0, result.output
    a, b = load_file(out / "model" / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(tiny_on_disk / "base" / "model.safetensors")
    assert not torch.equal(a["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])


def test_cli_errors_leave_nothing_behind(tiny_on_disk):
    runner = CliRunner()
    out = tiny_on_disk / "diverged"
    result = runner.invoke(app, _edit_args(tiny_on_disk, out, "--components", "blocks.1.mlp", "--lr", "1e30",
                                           "--grad-clip", "0", "--steps", "3"))
    assert "TrainingDivergedError" in type(result.exception).__name__, result.output
    assert "step" in str(result.exception)
    assert not out.exists()
    result = runner.invoke(app, _edit_args(tiny_on_disk, out))
    assert isinstance(result.exception, MechunlearnError) and "--components" in str(result.exception)
    result = runner.invoke(app, _edit_args(tiny_on_disk, out, "--components", "blocks.1.mlp", "--budget", "10"))
    assert isinstance(result.exception, MechunlearnError)
    assert not out.exists()


def test_config_json_round_trips_through_the_log(tmp_path):
    lm, result = _edited()
    out = save_edit(lm, result, tmp_path / "edit")
    assert EditConfig.from_json(json.loads((out / "train_log.json").read_text())["config"]) == result.config
