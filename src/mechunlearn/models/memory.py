"""Peak memory and pass counts of each stage, estimated from the model's config alone (the model
is built on the meta device: no weights are read), (the guard that refuses a stage that does not fit is
``memory_guard.py``).

Terms (bytes), each stated where it is computed:
  weights         parameters x dtype bytes (safetensors are memory-mapped: counted once touched)
  tokenizer       10 x the size of tokenizer.json (Gemma 3's 33 MB file: 320 MB resident, measured)
  trained state   trained parameters x 4 x dtype bytes: gradient, AdamW exp_avg and exp_avg_sq, and
                  the copy kept to restore the weights after a failure; a partly selected parameter
                  also gets a gradient of its whole shape
  activations     rows x tokens x layers x (4 d_model + d_ff + heads x head_dim) floats kept for
                  backward; without gradients one layer's worth
  logits          positions read over the vocabulary x vocab x 4 bytes x 3 with gradients (the fp32
                  logits, the log-softmax kept for backward, its gradient), x 2 without. The general
                  LM term projects a few positions at a time but keeps every chunk's graph until
                  backward, so every position of its windows counts; the fact terms read one
                  position per prompt (the answer set only for a closed-set forget term)
The terms of one training step add up: the fact and general-text terms share one projection to
the vocabulary and one backward pass, so both graphs are alive at once. Calibrated on Gemma 3 270M, fp32,
CPU; see tests/test_memory.py for the measured comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechunlearn.errors import MechunlearnError

MiB = 2**20
TOKENIZER_FACTOR = 10
LOGIT_COPIES_GRAD, LOGIT_COPIES_NO_GRAD = 3, 2
GUARD_ENV = "MECHUNLEARN_MEMORY_GUARD"  # "0" switches the guard off (the estimate may be too cautious)
RESIDENT = ("weights", "tokenizer", "pristine copy")  # parts still held from an earlier stage


@dataclass(frozen=True)
class ModelShape:
    n_params: int
    dtype_bytes: int
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    head_dim: int
    vocab: int
    tokenizer_bytes: int
    arch: object | None = None  # an Architecture of the meta-device model, to size component lists
    shapes: dict = field(default_factory=dict)  # parameter name -> shape

    @property
    def weights(self) -> int:
        return self.n_params * self.dtype_bytes

    def component_params(self, names) -> tuple[int, int]:
        """Trained parameters of ``names``, and the whole-shape gradient of each partly selected parameter."""
        from mechunlearn.models.components import expand_components, merge_slices

        comps = [self.arch.component(n) for n in expand_components(self.arch, names)]
        trained = sum(c.n_params for c in comps)
        partial = sum(math.prod(self.shapes[s.param]) for s in merge_slices(comps)
                      if s.stop - s.start < self.shapes[s.param][s.dim])
        return trained, partial

    def mlp_params(self) -> int:
        return sum(c.n_params for c in self.arch.matrices(blocks=("mlp",)))

    def block_params(self) -> int:
        return self.arch.n_trainable_matrix_params

    def linear_shapes(self) -> list[tuple[int, ...]]:
        """The shape of every attention and MLP weight matrix (what LoRA on all linear layers adapts)."""
        params = {s.param for c in self.arch.matrices() for s in c.slices if s.param.endswith("weight")}
        return [self.shapes[p] for p in sorted(params)]

    def activations(self, rows: int, tokens: int, grad: bool) -> int:
        per_token = 4 * self.d_model + self.d_ff + self.n_heads * self.head_dim
        layers = self.n_layers if grad else 1
        return rows * tokens * layers * per_token * 4

    def logits(self, positions: int, grad: bool, columns: int | None = None) -> int:
        copies = LOGIT_COPIES_GRAD if grad else LOGIT_COPIES_NO_GRAD
        return positions * (columns or self.vocab) * 4 * copies


def shape_of(model: torch.nn.Module, dtype_bytes: int | None = None, tokenizer_bytes: int = 0) -> ModelShape:
    """The shape of a model object (loaded or on the meta device)."""
    from mechunlearn.models.components import architecture

    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    n_heads = _get(cfg, "num_attention_heads", "n_head")
    d_model = _get(cfg, "hidden_size", "n_embd")
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    params = list(model.parameters())
    seen, n_params = set(), 0
    for p in params:  # tied embeddings count once
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    return ModelShape(
        n_params=n_params, dtype_bytes=dtype_bytes or params[0].element_size(),
        n_layers=_get(cfg, "num_hidden_layers", "n_layer"), d_model=d_model,
        d_ff=_get(cfg, "intermediate_size", "n_inner") or 4 * d_model, n_heads=n_heads, head_dim=head_dim,
        vocab=cfg.vocab_size, tokenizer_bytes=tokenizer_bytes, arch=architecture(model),
        shapes={n: tuple(p.shape) for n, p in model.named_parameters()})


def _get(cfg, *names):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return None


def model_shape(spec: str, dtype: str = "float32", device: str | None = None) -> ModelShape:
    """The shape of the model ``load_model(spec)`` would load, from its config only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mechunlearn.models.loading import (
        DEFAULT_MODEL,
        _dtype,
        _looks_like_hub_id,
        _offline,
        check_model_source,
        default_model_dir,
    )

    check_model_source(spec)  # the loader's own one-line errors for a missing or unreadable model
    dtype_bytes = torch.tensor([], dtype=_dtype(dtype, device)).element_size()
    kwargs: dict = {}
    folder: Path | None = None
    if spec == DEFAULT_MODEL:
        folder = default_model_dir()
        source = str(folder)
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        source, kwargs = str(path.parent), {"gguf_file": path.name}
    elif Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        source = str(folder)
    elif _looks_like_hub_id(spec):
        source, kwargs = spec, {"local_files_only": _offline()}
    else:
        raise MechunlearnError(f"no such model folder or file: {spec}")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise MechunlearnError(f"cannot read the config of {spec!r} to estimate memory: "
                               f"{str(e).splitlines()[0][:160]}") from None
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    tok_file = folder / "tokenizer.json" if folder is not None else None
    tok_bytes = tok_file.stat().st_size * TOKENIZER_FACTOR if tok_file is not None and tok_file.exists() else 0
    if not tok_bytes:  # no file to size: a fast tokenizer holds about 1.2 KB per vocabulary entry
        tok_bytes = config.get_text_config().vocab_size * 1200
    return shape_of(meta, dtype_bytes, tok_bytes)


def prompt_tokens(prompts) -> int:
    """The longest prompt in tokens, from its characters (about 4 per token, plus BOS)."""
    return max((len(p) for p in prompts), default=64) // 4 + 2


@dataclass
class Stage:
    name: str
    parts: dict[str, int]
    passes: dict[str, int] = field(default_factory=dict)  # "forward" / "backward" batched passes
    hint: str = ""  # the option that lowers this stage's peak

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def new_bytes(self, loaded: bool) -> int:
        """What the stage still has to allocate: after loading, the weights are already held."""
        return sum(v for k, v in self.parts.items() if not (loaded and k in RESIDENT))


@dataclass
class Estimate:
    model: str
    stages: list[Stage]
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def peak(self) -> Stage:
        return max(self.stages, key=lambda s: s.total)

    def lines(self) -> list[str]:
        out = [f"memory estimate for {self.model} (peak per stage; passes are batched forward/backward passes)"]
        for s in self.stages:
            passes = ", ".join(f"{v:,} {k}" for k, v in s.passes.items() if v)
            parts = ", ".join(f"{k} {mib(v)}" for k, v in s.parts.items() if v)
            out.append(f"  {s.name:<28} {mib(s.total):>10}   passes: {passes or '-'}")
            out.append(f"  {'':<28} {'':>10}   = {parts}")
        total = {k: sum(s.passes.get(k, 0) for s in self.stages) for k in ("forward", "backward")}
        out.append(f"  peak: {self.peak.name} {mib(self.peak.total)}; in all about {total['forward']:,} forward "
                   f"and {total['backward']:,} backward passes")
        out += [f"  note: {n}" for n in self.notes]
        return out


def mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


# --- stages ------------------------------------------------------------------------------------

def base_parts(shape: ModelShape, copies: int = 1) -> dict[str, int]:
    parts = {"weights": shape.weights, "tokenizer": shape.tokenizer_bytes}
    if copies > 1:
        parts["pristine copy"] = shape.weights * (copies - 1)
    return parts


def load_stage(shape: ModelShape) -> Stage:
    return Stage("load", base_parts(shape), hint="--dtype bfloat16 (on a GPU) or a smaller model")


def forward_stage(shape: ModelShape, name: str, n_prompts: int, batch: int, tokens: int, copies: int = 1,
                  vocab_rows: bool = True, hint: str = "", extra: dict | None = None) -> Stage:
    rows = min(batch, max(1, n_prompts))
    parts = {**base_parts(shape, copies), "activations": shape.activations(rows, tokens, grad=False),
             "logits": shape.logits(rows, grad=False) if vocab_rows else 0, **(extra or {})}
    return Stage(name, parts, {"forward": math.ceil(n_prompts / batch)}, hint)


def edit_step_stage(shape: ModelShape, config, trained: int, partial: int, tokens: int, steps: int | None = None,
                    closed_answers: int | None = None, copies: int = 1, n_forget: int = 0) -> Stage:
    """One optimizer step of the localized trainer at ``config`` (an EditConfig, resolved)."""
    c = config
    accum = c.grad_accum
    f_rows = math.ceil(c.forget_batch_size / accum) if c.c_forget != 0 else 0
    m_rows = math.ceil(c.maintain_batch_size / accum) if c.c_maintain > 0 else 0
    g_rows = math.ceil(c.general_batch_size / accum) if c.c_general > 0 else 0
    answers_only = c.forget_over == "answers" and closed_answers
    fact_logits = shape.logits(f_rows, True, closed_answers if answers_only else None) + shape.logits(m_rows, True)
    parts = {
        **base_parts(shape, copies),
        "trained state": trained * 4 * shape.dtype_bytes + partial * shape.dtype_bytes,
        "fact activations": shape.activations(f_rows + m_rows, tokens, grad=True),
        "fact logits": fact_logits,
        "general activations": shape.activations(g_rows, c.general_length, grad=True),
        "general logits": shape.logits(g_rows * (c.general_length - 1), grad=True),
    }
    if c.cpu_bf16:
        parts["bf16 copies of the frozen weights"] = bf16_copies(shape)
    steps = steps or c.steps
    micro = steps * accum
    passes = {"forward": micro * ((f_rows + m_rows > 0) + (g_rows > 0)), "backward": micro * (f_rows + m_rows + g_rows > 0)}
    if c.target:  # strength checks on the forget prompts
        passes["forward"] += math.ceil(steps / c.check_every) * math.ceil(max(1, n_forget) / 16)
    hint = "--grad-accum, --forget-batch/--maintain-batch/--general-batch or --general-length"
    return Stage("edit step", parts, passes, hint)


def bf16_copies(shape: ModelShape) -> int:
    """What ``cpu_bf16``'s bf16 copies of the frozen weights hold (at most every weight, 2 bytes each;
    models/precision.py ``FrozenBf16``); CUDA's autocast makes none, so this overestimates there."""
    return shape.n_params * 2


def relearn_stage(shape: ModelShape, config, n_forget: int, tokens: int, copies: int = 1) -> Stage:
    """One relearning step (evaluate/attacks/relearn.py): a full copy of the model, trained with
    LoRA on every linear layer of the blocks (or every weight), on a fixed batch."""
    rows = n_forget - n_forget // 2 + config.n_maintain
    if config.method == "lora":
        lora = sum(config.rank * sum(s) for s in shape.linear_shapes())
        state = lora * 4 * 4  # fp32 adapter, its gradient, exp_avg, exp_avg_sq
    else:
        state = shape.n_params * 3 * shape.dtype_bytes
    parts = {**base_parts(shape, copies), "attack copy": shape.weights, "trained state": state,
             "fact activations": shape.activations(rows, tokens, grad=True),
             "fact logits": shape.logits(rows, grad=True),
             "general activations": shape.activations(config.n_general, config.general_length, grad=True),
             "general logits": shape.logits(config.n_general * (config.general_length - 1), grad=True)}
    if config.cpu_bf16:
        parts["bf16 copies of the frozen weights"] = bf16_copies(shape)
    evals = config.steps // config.eval_every + 2
    half = max(1, n_forget // 2)
    passes = {"forward": config.steps * (1 + (config.n_general > 0))
              + evals * len(config.eval_formats) * math.ceil(half / 16),
              "backward": config.steps}
    return Stage("relearning step", parts, passes, "evaluation.config.relearn.rank / n_general / general_length")
