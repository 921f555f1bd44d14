import pytest
import torch

from mechunlearn.errors import MechunlearnError, UnsupportedArchitectureError
from mechunlearn.models.components import Architecture


def test_whole_matrices_count_every_weight_of_the_blocks(tiny):
    arch = tiny.arch
    params = dict(tiny.model.named_parameters())
    counted = set()
    for c in arch.matrices():
        for s in c.slices:
            counted.add(s.param)
    block_params = {n for n in params if n.startswith(arch.layers_path) and "norm" not in n and "ln" not in n
                    and "rotary" not in n}
    assert counted == block_params
    total = sum(params[n].numel() for n in counted)
    assert arch.n_trainable_matrix_params == total


def test_units_partition_their_matrix(tiny):
    arch = tiny.arch
    for matrix in ("blocks.1.attn.q", "blocks.1.attn.k", "blocks.1.attn.o", "blocks.1.mlp.in", "blocks.1.mlp.out"):
        whole = arch.component(matrix)
        units = arch.units(matrix)
        weight_params = sum(u.n_params for u in units)
        bias_on_input = any(s.param.endswith("bias") for s in whole.slices) and whole.matrix in ("o", "out")
        if bias_on_input:  # an input-side bias belongs to the whole matrix, not to one unit
            bias = next(s for s in whole.slices if s.param.endswith("bias"))
            weight_params += bias.stop - bias.start
        assert weight_params == whole.n_params
        # units cover disjoint entries
        params = dict(tiny.model.named_parameters())
        marks = {n: torch.zeros_like(p, dtype=torch.int) for n, p in params.items()}
        for u in units:
            for s in u.slices:
                s.view(marks[s.param]).add_(1)
        assert max(int(m.max()) for m in marks.values()) == 1


def test_gqa_kv_heads_are_kv_heads(tiny_llama):
    arch = tiny_llama.arch
    assert arch.n_kv_heads == 2 and arch.n_heads == 4
    assert len(arch.units("blocks.0.attn.k")) == 2
    assert len(arch.units("blocks.0.attn.q")) == 4
    assert arch.component("blocks.0.attn.k.h1").n_params == arch.d_head * arch.d_model


def test_neox_fused_qkv_head_slices_follow_the_interleaved_layout():
    from mechunlearn.models.tiny import tiny_model

    lm = tiny_model("gpt_neox")
    arch = lm.arch
    dh = arch.d_head
    q1 = arch.component("blocks.0.attn.q.h1").slices[0]
    k1 = arch.component("blocks.0.attn.k.h1").slices[0]
    assert (q1.start, q1.stop) == (3 * dh, 4 * dh)
    assert (k1.start, k1.stop) == (4 * dh, 5 * dh)
    # the model's own split agrees: head 1's query = rows 3dh..4dh of query_key_value
    attn = lm.model.gpt_neox.layers[0].attention
    x = torch.randn(1, 2, arch.d_model)
    qkv = attn.query_key_value(x).view(1, 2, arch.n_heads, 3 * dh)
    q_model = qkv[..., 1, :dh]
    w = q1.view(attn.query_key_value.weight)
    b = attn.query_key_value.bias[q1.start:q1.stop]
    torch.testing.assert_close(x @ w.T + b, q_model)


def test_gpt2_conv1d_slices_columns():
    from mechunlearn.models.tiny import tiny_model

    arch = tiny_model("gpt2").arch
    v = arch.component("blocks.0.attn.v.h2").slices[0]
    assert v.dim == 1 and v.start == 2 * arch.d_model + 2 * arch.d_head
    o = arch.component("blocks.0.attn.o.h2").slices[0]
    assert o.dim == 0 and (o.start, o.stop) == (2 * arch.d_head, 3 * arch.d_head)


@pytest.mark.parametrize("bad", ["blocks.99.mlp.in", "blocks.0.mlp.q", "blocks.0.attn.q.h9", "mlp.in", "blocks.0.attn.q.n1"])
def test_bad_component_names_fail_clearly(tiny_llama, bad):
    with pytest.raises(MechunlearnError):
        tiny_llama.arch.component(bad)


def test_llama_like_mlps_have_a_gate_gpt2_and_neox_do_not(tiny):
    assert tiny.arch.has_gate == (tiny.arch.family == "llama")


def test_unknown_architecture_lists_supported():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedArchitectureError, match="llama"):
        Architecture(model)


def _heads_and_neurons(lm, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head attention outputs before o [B, T, H, dh] and MLP activations before out [B, T, d_mlp]."""
    from mechunlearn.models.encoding import encode
    from mechunlearn.models.hooks import cache_activations, unit_view

    names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.mlp.hook_post"]
    batch = encode(lm.tokenizer, ["Fact: Tiger Woods plays the sport of", "The mother tongue of Tiger is"])
    with torch.no_grad(), cache_activations(lm.model, names) as cache:
        lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return unit_view(cache[names[0]], lm.arch.hook_point(names[0])), cache[names[1]]


def _scaled(lm, component: str, factor: float):
    """Multiply every entry of ``component`` (its weight rows or columns and bias) in place."""
    params = dict(lm.model.named_parameters())
    with torch.no_grad():
        for s in lm.arch.component(component).slices:
            s.view(params[s.param]).mul_(factor)


def test_each_family_s_slices_are_what_the_model_computes_with(tiny):
    """Fused (GPT-2, NeoX, Phi-3) or not, a component's slices are the entries the model reads
    for that head or neuron: attention is linear in V, so doubling a KV head's v doubles exactly
    the outputs of the query heads that read it; a gated MLP is linear in its up projection
    ('in'), so doubling a neuron's rows doubles that neuron; a neuron without a gate whose 'in' is
    zeroed is silent (gelu(0) = 0). Nothing else moves."""
    original = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    try:
        _check_slices(tiny)
    finally:
        tiny.model.load_state_dict(original, strict=False)


def _check_slices(tiny):
    arch, layer = tiny.arch, 1
    z0, post0 = _heads_and_neurons(tiny, layer)
    group = arch.n_heads // arch.n_kv_heads
    kv = arch.n_kv_heads - 1
    _scaled(tiny, f"blocks.{layer}.attn.v.h{kv}", 2.0)
    z1, _ = _heads_and_neurons(tiny, layer)
    _scaled(tiny, f"blocks.{layer}.attn.v.h{kv}", 0.5)
    readers = [h for h in range(arch.n_heads) if h // group == kv]
    others = [h for h in range(arch.n_heads) if h not in readers]
    torch.testing.assert_close(z1[:, :, readers], 2 * z0[:, :, readers])
    torch.testing.assert_close(z1[:, :, others], z0[:, :, others])
    assert z0[:, :, readers].abs().max() > 1e-3

    neuron = 5
    _scaled(tiny, f"blocks.{layer}.mlp.in.n{neuron}", 2.0 if arch.has_gate else 0.0)
    _, post2 = _heads_and_neurons(tiny, layer)
    rest = [n for n in range(arch.d_mlp) if n != neuron]
    torch.testing.assert_close(post2[..., neuron], (2 if arch.has_gate else 0) * post0[..., neuron])
    torch.testing.assert_close(post2[..., rest], post0[..., rest])
    assert post0[..., neuron].abs().max() > 1e-4
