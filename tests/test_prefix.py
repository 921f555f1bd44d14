"""The KV-prefix forward (models/prefix.py) equals a full forward pass, in values and gradients."""

from contextlib import contextmanager

import pytest
import torch

from mechunlearn.models.encoding import encode, final_hidden
from mechunlearn.models.prefix import (
    PrefixKV,
    final_hidden_shared,
    forward_suffix,
    shared_prefix_length,
)
from mechunlearn.models.tiny import FAMILIES, tiny_model

ONE_SHOT = "Fact: Tiger Woods plays the sport of golf\nFact:"
PROMPTS = [f"{ONE_SHOT} {name} plays the sport of" for name in ("Tom Brady", "LeBron James", "Al", "Serena Williams")]

# every family, and a 6-layer Gemma 3 whose last layer is global while the others slide (window 8)
MODELS = [(f, 4) for f in FAMILIES] + [("gemma", 6)]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}-{m[1]}layers")
def lm(request, one_thread):
    family, n_layers = request.param
    return tiny_model(family, seed=1, n_layers=n_layers)


@contextmanager
def counted_calls(model):
    calls = []
    handle = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def hidden_and_grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    project = torch.randn(model.config.hidden_size, 3, generator=torch.Generator().manual_seed(0))
    hidden = fn(model, batch)
    (hidden @ project).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return hidden.detach(), grads


def test_shared_prefix_pass_equals_a_full_forward_in_values_and_gradients(lm):
    batch = encode(lm.tokenizer, PROMPTS)
    P = shared_prefix_length(batch)
    assert P >= 10 and (batch.input_ids[:, :P] == batch.input_ids[0, :P]).all()
    window = getattr(lm.model.config, "sliding_window", None)
    if window and window < lm.model.config.max_position_embeddings:
        assert P > window  # the prefix overflows the sliding window (Gemma 2/3, Mistral)
    full, full_grads = hidden_and_grads(lm.model, final_hidden, batch)
    with counted_calls(lm.model) as calls:
        shared, shared_grads = hidden_and_grads(lm.model, final_hidden_shared, batch)
    assert len(calls) == 2  # the prefix pass, then the suffixes: the shared path really ran
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    assert set(shared_grads) == set(full_grads)
    # every weight of the base model gets a gradient (the prefix tokens' embeddings only through the cache)
    base = {id(p) for p in lm.model.base_model.parameters()}
    assert {id(p) for n, p in lm.model.named_parameters() if n in full_grads} == base
    for name, g in full_grads.items():
        torch.testing.assert_close(shared_grads[name], g, atol=1e-4 * max(g.abs().max().item(), 1e-6), rtol=0,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_batches_without_a_shared_prefix_fall_back_to_one_pass(lm):
    unrelated = ["Tom Brady plays the sport of", "The mother tongue of Al is"]
    for prompts in (unrelated, PROMPTS[:1]):
        batch = encode(lm.tokenizer, prompts)
        with counted_calls(lm.model) as calls, torch.no_grad():
            out = final_hidden_shared(lm.model, batch)
        assert len(calls) == 1
        torch.testing.assert_close(out, final_hidden(lm.model, batch), atol=0, rtol=0)


def test_a_prefix_is_reusable_and_rows_select_each_prompts_own_prefix(lm):
    """Patching-style use: prompts with different prefixes of one length, each repeated V times
    variant-major, run on one stored prefix twice; the stored keys never change."""
    batch = encode(lm.tokenizer, ["Fact: Al plays the sport of", "Question: Al plays the sport of",
                                  "Fact: Tom Brady plays the sport of"])
    P, V, B = 3, 2, len(batch)
    with torch.no_grad():
        prefix = PrefixKV.run(lm.model, batch.input_ids[:, :P], batch.attention_mask[:, :P])
        stored = [(k.clone(), v.clone()) for k, v in prefix.keys_values]
        rows = torch.arange(B).repeat(V)
        ids, mask = batch.input_ids.repeat(V, 1), batch.attention_mask.repeat(V, 1)
        reference = lm.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, P:]
        for _ in range(2):
            h = forward_suffix(lm.model, prefix, rows, ids[:, P:], mask)
            real = mask[:, P:].bool()
            torch.testing.assert_close(h[real], reference[real], atol=1e-5, rtol=1e-5)
    assert prefix.rows == B and prefix.length == P
    for (k, v), (k0, v0) in zip(prefix.keys_values, stored, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
