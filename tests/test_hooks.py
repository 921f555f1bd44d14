import copy

import pytest
import torch

from mechunlearn.models.components import architecture
from mechunlearn.models.encoding import encode
from mechunlearn.models.hooks import (
    cache_activations,
    hooks,
    patch_activations,
    record_gradients,
    skip_layers,
    unit_view,
)

PROMPTS = ["Fact: Tiger Woods plays the sport of", "The mother tongue of Tiger is"]


def _batch(lm):
    return encode(lm.tokenizer, PROMPTS, ["Tiger Woods", "Tiger"])


def _logits(lm, batch):
    with torch.no_grad():
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _all_hook_names(arch):
    names = ["hook_embed"]
    for L in range(arch.n_layers):
        names += [f"blocks.{L}.{h}" for h in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                                              "attn.hook_z", "mlp.hook_post")]
        names += [c.name for c in arch.matrices([L])]
    return names


def test_patching_with_own_activations_is_identity(tiny):
    batch = _batch(tiny)
    names = _all_hook_names(tiny.arch)
    with cache_activations(tiny.model, names) as cache:
        clean = _logits(tiny, batch)
    assert set(cache) == set(names)
    with patch_activations(tiny.model, cache):
        patched = _logits(tiny, batch)
    torch.testing.assert_close(patched, clean, atol=1e-5, rtol=0)


def test_patching_changes_output_when_source_differs(tiny):
    batch = _batch(tiny)
    name = f"blocks.{tiny.arch.n_layers - 1}.hook_resid_post"
    with cache_activations(tiny.model, [name]) as cache:
        clean = _logits(tiny, batch)
    with patch_activations(tiny.model, {name: cache[name] + 1.0}, positions=batch.last_mask):
        patched = _logits(tiny, batch)
    last = batch.last_index
    rows = torch.arange(len(batch))
    assert not torch.allclose(patched[rows, last], clean[rows, last])
    before = batch.last_mask.clone()
    before[rows, last] = False
    torch.testing.assert_close(patched[before], clean[before], atol=1e-6, rtol=0)


def test_head_outputs_through_o_sum_to_attention_output(tiny):
    arch = tiny.arch
    batch = _batch(tiny)
    L = 1
    o = tiny.model.get_submodule(arch.hook_point(f"blocks.{L}.attn.o").module)
    with cache_activations(tiny.model, [f"blocks.{L}.attn.hook_z"]) as cache:
        _logits(tiny, batch)
    with cache_activations(tiny.model, [f"blocks.{L}.attn.o"]) as z_cache:  # o's input = hook_z
        _logits(tiny, batch)
    z = cache[f"blocks.{L}.attn.hook_z"]
    torch.testing.assert_close(z, z_cache[f"blocks.{L}.attn.o"])
    point = arch.hook_point(f"blocks.{L}.attn.hook_z")
    per_head = unit_view(z, point)  # [B, T, H, dh]
    comp = arch.units(f"blocks.{L}.attn.o")
    params = dict(tiny.model.named_parameters())
    total = 0
    for h, c in enumerate(comp):
        w = c.slices[0].view(params[c.slices[0].param])
        contrib = per_head[:, :, h] @ (w.T if c.slices[0].dim == 1 else w)
        total = total + contrib
    out = o(z)
    bias = getattr(o, "bias", None)
    if bias is not None:
        out = out - bias
    torch.testing.assert_close(total, out, atol=1e-5, rtol=1e-5)


def test_hooks_removed_after_exception(tiny):
    batch = _batch(tiny)
    clean = _logits(tiny, batch)

    def explode(act, point):
        return act * 0

    with pytest.raises(RuntimeError):
        with hooks(tiny.model, [("blocks.0.hook_resid_post", explode)]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.model.modules())
    torch.testing.assert_close(_logits(tiny, batch), clean)


def test_patching_one_head_at_the_last_position_touches_only_that_slice(tiny):
    batch = _batch(tiny)
    name = "blocks.0.attn.hook_z"
    point = tiny.arch.hook_point(name)
    with cache_activations(tiny.model, [name]) as clean:
        _logits(tiny, batch)
    source = torch.full_like(clean[name], 7.0)
    with patch_activations(tiny.model, {name: source}, positions=batch.last_mask, units={name: [1]}), \
            cache_activations(tiny.model, [name]) as cache:
        _logits(tiny, batch)
    heads, before = unit_view(cache[name], point), unit_view(clean[name], point)
    rows = torch.arange(len(batch))
    assert torch.all(heads[rows, batch.last_index, 1] == 7.0)
    torch.testing.assert_close(heads[:, :, 0], before[:, :, 0])
    untouched = ~batch.last_mask
    torch.testing.assert_close(heads[untouched], before[untouched])


def test_architecture_table_is_built_once_per_model_object(tiny):
    assert architecture(tiny.model) is architecture(tiny.model) is tiny.arch
    other = type(tiny)(copy.deepcopy(tiny.model), tiny.tokenizer, tiny.spec, tiny.source)
    assert other.arch is not tiny.arch and other.arch.n_layers == tiny.arch.n_layers


def test_hooks_and_skip_layers_do_not_rebuild_the_table(tiny, monkeypatch):
    import mechunlearn.models.components as components

    assert tiny.arch.n_layers  # built before counting
    built = []
    monkeypatch.setattr(components.Architecture, "__init__", lambda self, model: built.append(model))
    batch = _batch(tiny)
    with skip_layers(tiny.model, 1), cache_activations(tiny.model, ["blocks.1.hook_resid_post"]):
        _logits(tiny, batch)
    assert built == []


def test_record_gradients_matches_autograd_on_frozen_model(tiny):
    batch = _batch(tiny)
    for p in tiny.model.parameters():
        p.requires_grad_(False)
    name = "blocks.1.hook_resid_pre"
    with record_gradients(tiny.model, [name]) as acts:
        logits = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits[:, -1, 5].sum().backward()
    g = acts[name].grad
    assert g is not None and g.abs().sum() > 0
    # finite difference along the gradient direction
    eps = 1e-3
    direction = g / g.norm()
    base = acts[name].detach()
    with torch.no_grad(), patch_activations(tiny.model, {name: base + eps * direction}):
        up = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1, 5].sum()
    with torch.no_grad(), patch_activations(tiny.model, {name: base - eps * direction}):
        down = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1, 5].sum()
    assert abs((up - down) / (2 * eps) - g.norm()) < 1e-2 * g.norm() + 1e-4
    for p in tiny.model.parameters():
        p.requires_grad_(True)


def test_skipping_layers_whose_output_is_patched_changes_nothing(tiny):
    """The early layers run as identities when the residual entering ``start`` is patched in
    anyway; the layers are back in place afterwards, even after an exception."""
    batch = _batch(tiny)
    start = tiny.arch.n_layers - 1
    name = f"blocks.{start}.hook_resid_pre"
    with cache_activations(tiny.model, [name]) as cache:
        clean = _logits(tiny, batch)
    layers = list(tiny.model.get_submodule(tiny.arch.layers_path))
    with skip_layers(tiny.model, start), patch_activations(tiny.model, cache):
        torch.testing.assert_close(_logits(tiny, batch), clean, atol=1e-5, rtol=0)
    with skip_layers(tiny.model, start):
        assert not torch.allclose(_logits(tiny, batch), clean, atol=1e-3)  # unpatched: the layers really are skipped
    with pytest.raises(RuntimeError), skip_layers(tiny.model, start):
        raise RuntimeError("boom")
    assert list(tiny.model.get_submodule(tiny.arch.layers_path)) == layers
    torch.testing.assert_close(_logits(tiny, batch), clean)
