import time

import pytest
import torch

from mechunlearn.errors import ModelLoadError, UnsupportedArchitectureError
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
