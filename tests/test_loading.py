import time

import pytest
import torch

from mechunlearn.errors import MechunlearnError, ModelLoadError, UnsupportedArchitectureError
from mechunlearn.models.loading import load_model
from mechunlearn.models.tiny import tiny_model


def test_unknown_path_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="no such"):
        load_model("./does/not/exist")
    with pytest.raises(ModelLoadError, match="GGUF"):
        load_model("/nope/model.gguf")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        load_model("someone/definitely-not-cached-model")


def test_unsupported_architecture_folder(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="supported"):
        load_model(str(tmp_path))


def test_saved_tiny_model_round_trips(tmp_path):
    lm = tiny_model("gpt2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    again = load_model(str(tmp_path))
    for k, v in again.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert again.tokenizer.padding_side == "right"


@pytest.mark.integration
def test_default_model_loads_fast_from_cache(gemma):
    start = time.perf_counter()
    lm = load_model("default")
    seconds = time.perf_counter() - start
    print(f"second load of the default model: {seconds:.1f} s")
    assert seconds <= 10
    assert lm.arch.n_layers == 18 and lm.model.config.model_type == "gemma3_text"
    assert next(lm.model.parameters()).dtype == torch.float32


def test_device_must_exist_here():
    from mechunlearn.models.loading import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:7")


def test_local_weights_must_be_readable_safetensors(tmp_path):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # truncated: the header promises more bytes than there are
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_model(str(tmp_path))
    weights.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match=r"no \.safetensors weights \(only pytorch_model\.bin"):
        load_model(str(tmp_path))


def test_gguf_files_are_checked_before_loading(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all, just text")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(fake))
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(short))


def test_a_run_config_and_the_command_line_accept_the_same_dtype_names():
    from mechunlearn.cli.common import check_model_args
    from mechunlearn.experiment import load_config
    from mechunlearn.experiment.schema import ConfigError
    from mechunlearn.models.loading import _dtype
    from mechunlearn.models.names import DTYPES

    widths = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    for name, canonical in DTYPES.items():
        assert load_config("quick", {"dtype": name}).dtype == name
        check_model_args({}, name)
        assert widths[_dtype(name, "cpu")] == (canonical if canonical != "auto" else "float32")
    with pytest.raises(ConfigError, match="'int8'"):
        load_config("quick", {"dtype": "int8"})
    with pytest.raises(MechunlearnError, match="--dtype 'int8'"):
        check_model_args({}, "int8")
