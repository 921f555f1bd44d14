"""Each loss term against its formula, on hand-made logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from mechunlearn.edit import EditConfig
from mechunlearn.edit.objectives import (
    OBJECTIVES,
    FactLogits,
    forget_objectives,
    general_lm_loss,
    get_objective,
)
from mechunlearn.errors import MechunlearnError

CONFIG = EditConfig()


def _batch(p_target: list[float], n: int = 5, reference=None) -> FactLogits:
    """Logits whose softmax gives column 0 probability ``p`` and spreads the rest evenly."""
    rows = []
    for p in p_target:
        probs = torch.full((n,), (1 - p) / (n - 1))
        probs[0] = p
        rows.append(probs.log())
    ref = None if reference is None else torch.tensor(reference)
    return FactLogits(torch.stack(rows).requires_grad_(True), torch.zeros(len(p_target), dtype=torch.long), ref)


def test_registry():
    assert forget_objectives() == ["edit", "grad_ascent", "log1m", "npo"]
    assert OBJECTIVES["maintain"].role == "maintain" and OBJECTIVES["edit"].answer == "new"
    assert all(OBJECTIVES[n].answer == "true" for n in ("log1m", "grad_ascent", "npo", "maintain"))
    with pytest.raises(MechunlearnError, match="unknown objective"):
        get_objective("rmu")


@pytest.mark.parametrize("name", ["edit", "maintain"])
def test_cross_entropy_terms(name):
    batch = _batch([0.9, 0.2, 0.5])
    expected = F.cross_entropy(batch.logits, batch.target, reduction="none")
    torch.testing.assert_close(get_objective(name).loss(batch, CONFIG), expected)


def test_log1m_value_and_cutoff():
    p = [0.9, 0.5, 0.01, math.exp(-6)]
    batch = _batch(p)
    loss = get_objective("log1m").loss(batch, CONFIG)
    expected = [-math.log(1 - q) if math.log(q) >= -5 else 0.0 for q in p]
    assert loss.tolist() == pytest.approx(expected, rel=1e-4)
    loss.sum().backward()
    assert batch.logits.grad[3].abs().max() == 0  # below the cutoff: no gradient at all
    assert batch.logits.grad[0, 0] > 0  # minimising lowers the true answer's logit
    assert torch.isfinite(get_objective("log1m").loss(_batch([1 - 1e-9]), CONFIG)).all()


def test_grad_ascent_is_log_p():
    batch = _batch([0.9, 0.3])
    assert get_objective("grad_ascent").loss(batch, CONFIG).tolist() == pytest.approx([math.log(0.9), math.log(0.3)],
                                                                                      rel=1e-5)


def test_npo_matches_its_formula():
    beta = CONFIG.npo_beta
    ref = [math.log(0.9), math.log(0.9)]
    batch = _batch([0.9, 0.3], reference=ref)
    loss = get_objective("npo").loss(batch, CONFIG)
    expected = [(2 / beta) * math.log(1 + (p / 0.9) ** beta) for p in (0.9, 0.3)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-4)
    assert loss[0].item() == pytest.approx(2 / beta * math.log(2), rel=1e-4)  # at the reference
    with pytest.raises(ValueError, match="reference"):
        get_objective("npo").loss(_batch([0.5]), CONFIG)


def test_general_lm_loss_matches_the_models_own_loss(tiny):
    ids = torch.randint(3, len(tiny.tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = general_lm_loss(tiny.model, ids)
        per_row = [tiny.model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss for i in range(2)]
    torch.testing.assert_close(ours, torch.stack(per_row), atol=1e-5, rtol=1e-5)
