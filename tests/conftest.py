import pytest
import torch

from mechunlearn.models.tiny import FAMILIES, tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread is as fast, and far faster than two when
    other processes compete for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=FAMILIES, scope="session")
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M (converted to the safetensors cache on first use)."""
    from mechunlearn.models.loading import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def gemma_known_athletes(gemma):
    """The built-in athletes the embedded model knows (P(true) > 0.7 over the answer set)."""
    from mechunlearn.facts import filter_known, load_builtin_athletes

    return filter_known(gemma.model, gemma.tokenizer, load_builtin_athletes()).known


def _save_tiny(folder, n_layers: int = 4):
    lm = tiny_model("llama", n_layers=n_layers)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 4-layer tiny Llama saved as an HF folder (what a run config names as its model)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_grid(tiny_dir, tmp_path_factory):
    """``tiny_grid(**over)`` -> the path of a run config of a small grid on the tiny model and the
    built-in athletes: random and all-MLPs arms, one setting, 2 seeds, one training step."""
    import yaml

    folder = tmp_path_factory.mktemp("grids")

    def write(**over) -> object:
        cfg = {"model": str(tiny_dir), "seeds": [0, 1],
               "facts": {"dataset": "sports", "threshold": 0.0, "limit": 60},
               "localization": {"n_facts": 6, "probe_facts": 0, "methods": ["random", "all_mlps"],
                                "budget": {"match": None, "params": 20000, "rule": "under"}},
               "settings": [{"name": "edit4", "objective": "edit", "forget": 4}],
               "training": {"target": None, "default": {"steps": 1, "forget_batch_size": 4, "maintain_batch_size": 4,
                                                        "general_batch_size": 1, "general_length": 16}},
               "evaluation": {"formats": ["train"], "attacks": [],
                              "config": {"lm_windows": 1, "lm_window_length": 16}},
               **over}
        path = folder / f"grid{len(list(folder.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
