import pytest
import torch

from mechunlearn.models.tiny import FAMILIES, tiny_model

torch.set_num_threads(2)


@pytest.fixture(params=FAMILIES, scope="session")
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")
