"""Attention and MLP layers on one scale (localize/scores.py), proved on a planted model.

The model is linear by construction (norms replaced by identities, queries and keys zero so
attention is uniform, the MLP gate a constant from its bias), 2 layers, d 64 split into
subspaces E (token identity, dims 0-15), S (16-31) and A (32-47, the only dims the unembedding
reads). At the last token:

* path A: attention 0, head 0 writes ``alpha * mean_t E_t`` into A;
* path B: MLP 0 copies ``E_t`` into S at every position, attention 1, head 0 writes
  ``ratio * alpha * mean_t S_t`` into A: the same vector times ``ratio``;
* heads 2 and 3 of attention 0 read the same KV head and write ``+beta Q z`` and ``-beta Q z``:
  each has a large effect, the block's net effect is nothing.

So with ``ratio`` 1 attention 0 and MLP 0 have exactly the same effect on the answer; the old sum
over |head| scores scored attention 0 higher by the two cancelling heads' |effects|. (Attention 1
carries path B too; under causal tracing it also restores the noise added to the subject tokens'
S dims, so it is not tied with MLP 0 there.) The model need not know the facts: every score is a
fraction of whatever the corruption changes.
"""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from mechunlearn.facts import FactSet, load_builtin_athletes
from mechunlearn.facts.records import Fact
from mechunlearn.localize import localize, select
from mechunlearn.localize.scores import candidates
from mechunlearn.models.loading import from_model
from mechunlearn.models.tiny import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

E, S, A = slice(0, 16), slice(16, 32), slice(32, 48)
ALPHA, BETA, GATE_BIAS = 1.0, 3.0, 12.0


def planted_model(ratio: float, seed: int = 0):
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, mlp_bias=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    eye = torch.eye(16)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, E] = torch.randn(len(tokenizer), 16, generator=gen)
        model.lm_head.weight[:, A] = 4.0 * torch.randn(len(tokenizer), 16, generator=gen)
        layer0, layer1 = model.model.layers
        v0, o0 = layer0.self_attn.v_proj.weight, layer0.self_attn.o_proj.weight
        v0[0:16, E] = eye  # KV head 0 (query heads 0, 1): token identity
        v0[16:32, E] = torch.randn(16, 16, generator=gen)  # KV head 1 (query heads 2, 3)
        o0[A, 0:16] = ALPHA * eye  # head 0: path A
        cancel = BETA * torch.randn(16, 16, generator=gen)
        o0[A, 32:48], o0[A, 48:64] = cancel, -cancel  # heads 2 and 3: opposite, equal effects
        mlp0 = layer0.mlp
        mlp0.gate_proj.bias[0:16] = GATE_BIAS
        mlp0.up_proj.weight[0:16, E] = eye
        mlp0.down_proj.weight[S, 0:16] = eye / nn.functional.silu(torch.tensor(GATE_BIAS))  # S_t = E_t
        layer1.self_attn.v_proj.weight[0:16, S] = eye
        layer1.self_attn.o_proj.weight[A, 0:16] = ratio * ALPHA * eye  # path B
        for layer in (layer0, layer1):
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
        model.model.norm = nn.Identity()
    return from_model(model, tokenizer, f"planted-{ratio}")


def _facts(n_per_sport: int = 3) -> FactSet:
    every = load_builtin_athletes()
    by_sport: dict[str, list[Fact]] = {}
    for f in every:
        by_sport.setdefault(f.target_true, []).append(f)
    return every.subset([f for fs in by_sport.values() for f in fs[:n_per_sport]])


def _layer_scores(loc, arch) -> dict[str, float]:
    return {c.label: c.score for c in candidates(loc.scores, arch, "layer")}


def _old_attention_score(loc, layer: int, n_heads: int) -> float:
    return sum(abs(loc.scores[f"blocks.{layer}.attn.o.h{h}"]) for h in range(n_heads))


@pytest.fixture(scope="module")
def equal():
    return planted_model(ratio=1.0)


@pytest.fixture(scope="module")
def mlp_twice():
    return planted_model(ratio=2.0)


@pytest.mark.parametrize("method", ["causal_tracing", "attribution_patching"])
def test_attention_and_mlp_with_equal_effects_score_equal(equal, method):
    loc = localize(equal, _facts(), method, seed=0)
    layer = _layer_scores(loc, equal.arch)
    assert layer["blocks.0.mlp"] > 0.1  # the planted paths carry a real part of the effect
    assert layer["blocks.0.attn"] == pytest.approx(layer["blocks.0.mlp"], rel=1e-3)
    assert layer["blocks.1.mlp"] == pytest.approx(0.0, abs=1e-6)
    # the two cancelling heads each move the answer a lot, yet add nothing to their block
    s2, s3 = loc.scores["blocks.0.attn.o.h2"], loc.scores["blocks.0.attn.o.h3"]
    assert max(abs(s2), abs(s3)) > 0.5 * layer["blocks.0.mlp"]
    assert _old_attention_score(loc, 0, 4) > layer["blocks.0.mlp"] + abs(s2)  # the old rule's inflation
    # head granularity keeps the per-head scores
    heads = {c.label: c.score for c in candidates(loc.scores, equal.arch, "head")}
    assert heads["blocks.0.attn.o.h2"] == pytest.approx(abs(s2))


def test_attribution_of_the_cancelling_heads_sums_to_zero(equal):
    loc = localize(equal, _facts(), "attribution_patching", seed=0)
    s2, s3 = loc.scores["blocks.0.attn.o.h2"], loc.scores["blocks.0.attn.o.h3"]
    assert s2 == pytest.approx(-s3, rel=1e-4) and abs(s2) > 0.1
    assert loc.scores["blocks.0.attn.o"] == pytest.approx(loc.scores["blocks.0.attn.o.h0"], abs=1e-4)
    assert "one scale" in loc.evidence["aggregation"]


@pytest.mark.parametrize("method", ["causal_tracing", "attribution_patching"])
def test_layer_ranking_and_selection_follow_the_net_effect(mlp_twice, method):
    """Path B twice path A: MLP 0 (and attention 1) outrank attention 0, whose cancelling heads
    would have put it first under the old sum of |head| scores."""
    arch = mlp_twice.arch
    loc = localize(mlp_twice, _facts(), method, seed=0)
    layer = _layer_scores(loc, arch)
    assert layer["blocks.0.mlp"] > 1.5 * layer["blocks.0.attn"] > 0
    assert _old_attention_score(loc, 0, 4) > layer["blocks.0.mlp"]
    ranked = [c.label for c in sorted(candidates(loc.scores, arch, "layer"), key=lambda c: (-c.score, c.order))]
    assert ranked.index("blocks.0.attn") > max(ranked.index("blocks.0.mlp"), ranked.index("blocks.1.attn"))
    assert ranked[-1] == "blocks.1.mlp"
    size = {b: sum(c.n_params for c in arch.matrices([0], blocks=(b,))) for b in ("attn", "mlp")}
    sel = select(loc, arch, budget=size["attn"] + size["mlp"], granularity="layer")  # room for two blocks
    assert sorted(sel.components) == sorted([f"blocks.1.attn.{m}" for m in "qkvo"]
                                            + [f"blocks.0.mlp.{m}" for m in ("in", "gate", "out")])
