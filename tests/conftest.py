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
