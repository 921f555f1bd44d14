"""Tiny randomly initialised models of each supported family, for tests, benchmarks and quick
experiments. The tokenizer is a byte-level BPE trained on the fly (offline, deterministic)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from mechunlearn.models.loading import LoadedModel, from_model

# "gemma" is Gemma 3 (the embedded model's family)
FAMILIES = ("llama", "gemma", "gpt2", "gpt_neox", "gemma1", "gemma2", "mistral", "qwen2", "qwen3", "olmo2", "phi3")

_CORPUS = [
    "Fact: Tiger Woods plays the sport of golf",
    "plays the sport of football baseball basketball golf",
    "What sport does he play? Answer: A B C D",
    "The mother tongue of is French English Spanish Italian German",
    "Question: Options: You are a helpful chatbot that answers questions about athletes.",
    "the a of and to in is was for on that with as by at from it his her their city river music",
]


def tiny_tokenizer(extra_text: list[str] | None = None, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Answers (` football`, ` golf`, ` A` ...) are frequent in the training text, so each has
    a first token of its own."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 50 + (extra_text or []), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    return fast


def tiny_config(family: str, vocab_size: int, n_layers: int = 4):
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **common)
    if family == "gemma":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=8,
                                **common)
    if family in ("mistral", "qwen2", "qwen3", "olmo2", "phi3"):
        from transformers import AutoConfig

        # qwen2: biased q/k/v projections; qwen3: RMS norms on each head's queries and keys;
        # mistral: a sliding window shorter than the prompts; olmo2: the sublayers' outputs normed
        # before the residual; phi3: fused qkv and gate/up matrices
        extra = {"mistral": dict(sliding_window=8), "qwen3": dict(head_dim=16)}.get(family, {})
        return AutoConfig.for_model(family, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=False, **extra, **common)
    if family == "gemma1":
        return GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, max_position_embeddings=256, **common)
    if family == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=8,
                            **common)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers, num_attention_heads=4,
                             max_position_embeddings=256, **common)
    raise ValueError(f"unknown family {family!r}: {FAMILIES}")


def tiny_model(family: str = "llama", seed: int = 0, n_layers: int = 4, extra_text: list[str] | None = None) -> LoadedModel:
    tokenizer = tiny_tokenizer(extra_text)
    config = tiny_config(family, len(tokenizer), n_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return from_model(model, tokenizer, f"tiny-{family}")


__all__ = ["FAMILIES", "GemmaConfig", "tiny_config", "tiny_model", "tiny_tokenizer"]
