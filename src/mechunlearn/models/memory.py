"""Peak memory and pass counts of each stage, estimated from the model's config alone (the model
is built on the meta device: no weights are read), and a guard that refuses a stage that does not
fit in the memory available instead of letting the OS kill the process.

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
The terms of one training step add up: the fact and general-text terms run one after the other,
but the allocator keeps what the first freed (measured on CPU). Calibrated on Gemma 3 270M, fp32,
CPU; see tests/test_memory.py for the measured comparison.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechunlearn.errors import MechunlearnError

MiB = 2**20
TOKENIZER_FACTOR = 10
LOGIT_COPIES_GRAD, LOGIT_COPIES_NO_GRAD = 3, 2
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
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
        from mechunlearn.edit.selection import expand_components, merge_slices

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
    steps = steps or c.steps
    micro = steps * accum
    passes = {"forward": micro * ((f_rows + m_rows > 0) + (g_rows > 0)), "backward": micro * ((f_rows + m_rows > 0)
                                                                                               + (g_rows > 0))}
    if c.target:  # strength checks on the forget prompts
        passes["forward"] += math.ceil(steps / c.check_every) * math.ceil(max(1, n_forget) / 16)
    hint = "--grad-accum, --forget-batch/--maintain-batch/--general-batch or --general-length"
    return Stage("edit step", parts, passes, hint)


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
    evals = config.steps // config.eval_every + 2
    half = max(1, n_forget // 2)
    passes = {"forward": config.steps * (1 + (config.n_general > 0))
              + evals * len(config.eval_formats) * math.ceil(half / 16),
              "backward": config.steps * (1 + (config.n_general > 0))}
    return Stage("relearning step", parts, passes, "evaluation.config.relearn.rank / n_general / general_length")


# --- the guard ----------------------------------------------------------------------------------

def available_memory(device: str | torch.device | None = None) -> tuple[int, str]:
    """Bytes free for this process: CUDA's free memory on a GPU, else MemAvailable."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return free, f"free on {dev}"
    try:
        import psutil

        return psutil.virtual_memory().available, "available RAM"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return 1 << 62, "available RAM (unknown)"


def check_stage(stage: Stage, device=None, loaded: bool = False, what: str = "") -> None:
    """Refuse ``stage`` with one line when its new allocations exceed the available memory."""
    if os.environ.get(GUARD_ENV, "1") == "0":
        return
    need = stage.new_bytes(loaded)
    free, kind = available_memory(device)
    if need > free:
        hint = f"; lower it with {stage.hint}" if stage.hint else ""
        raise MechunlearnError(f"not enough memory for {what or stage.name}: it needs about {mib(need)} more "
                               f"(peak {mib(stage.total)}), {mib(free)} {kind}{hint}, or set {GUARD_ENV}=0 "
                               "to try anyway")


def check_all(estimate: Estimate, device=None) -> None:
    """Before loading: every stage must fit, so nothing is loaded for a run that cannot finish."""
    for stage in sorted(estimate.stages, key=lambda s: -s.total):
        check_stage(stage, device, loaded=False, what=f"the {stage.name} stage")


# --- whole commands -----------------------------------------------------------------------------

def edit_estimate(spec: str, shape: ModelShape, config, trained: int, partial: int, prompts: list[str],
                  n_forget: int, closed_answers: int | None = None) -> Estimate:
    """``mechunlearn edit``: load, the known-fact filter, one training step (and the step cap's
    passes), the before/after check."""
    tokens = prompt_tokens(prompts)
    n = len(prompts)
    stages = [
        load_stage(shape),
        forward_stage(shape, "known-fact filter", n, 32, tokens),
        edit_step_stage(shape, config, trained, partial, tokens, closed_answers=closed_answers, n_forget=n_forget),
        forward_stage(shape, "before/after check", 2 * n, 16, tokens),
    ]
    notes = [f"{trained:,} trained parameters; prompts up to ~{tokens} tokens; the edit step's passes are for "
             f"the cap of {config.steps} steps"]
    return Estimate(spec, stages, notes)


def edit_command_estimate(spec: str, dtype: str, device: str | None, config, facts, n_forget: int,
                          names_for) -> Estimate:
    """The estimate of ``mechunlearn edit`` before anything is loaded: ``names_for(arch)`` gives
    the trained components on the meta-device model's architecture."""
    from mechunlearn.models.loading import resolve_device

    shape = model_shape(spec, dtype, resolve_device(device))
    trained, partial = shape.component_params(names_for(shape.arch))
    closed = len(facts.answers) if facts.closed else None
    return edit_estimate(spec, shape, config.resolved(facts.closed), trained, partial,
                         [f.prompt for f in facts], n_forget, closed)


def print_estimate(estimate: Estimate) -> None:
    """On stdout, plain (a dry run's result, to read or to pipe)."""
    print("\n".join(estimate.lines()))


# --- mechunlearn run ----------------------------------------------------------------------------

def localization_stage(shape: ModelShape, method: str, n_facts: int, probe_facts: int, tokens: int, params: dict,
                       count: int) -> Stage:
    """One method's localization (``count`` of them in the run): rough pass counts of each method's
    batched restorations / gradients; the run also holds the pristine copy of the weights."""
    L, H = shape.n_layers, shape.n_heads
    passes: dict[str, int] = {}
    grad_rows, rows = 0, 0
    if method.startswith("causal_tracing"):
        max_rows, n_noise = params.get("max_rows", 160), params.get("n_noise", 1)
        variants = L * ((H + 2) if not method.endswith("mlps") else 1)
        passes["forward"] = 1 + n_noise * (1 + math.ceil(variants * n_facts / max_rows))
        rows = min(max_rows, variants * n_facts)
    elif method.startswith("attribution_patching"):
        batch = params.get("batch_size", 32)
        passes = {"forward": 2 * math.ceil(n_facts / batch), "backward": math.ceil(n_facts / batch)}
        grad_rows = min(batch, n_facts)
    elif method == "fact_lookup":
        max_rows = params.get("max_rows", 128)
        passes["forward"] = 2 + math.ceil((L * H + L) * n_facts / max_rows) + math.ceil(probe_facts / 16)
        rows = min(max_rows, (L * H + L) * n_facts)
    parts = {**base_parts(shape, 2),
             "activations": shape.activations(rows, tokens, False) + shape.activations(grad_rows, tokens, True),
             "logits": shape.logits(grad_rows, True) if grad_rows else 0,
             "cached activations": 2 * n_facts * tokens * L * (H * shape.head_dim + 2 * shape.d_model) * 4}
    passes = {k: v * count for k, v in passes.items()}
    return Stage(f"localize {method}", parts, passes, f"localization.params.{method}.max_rows / batch_size")


def run_estimate(config, work: dict, shape: ModelShape, prompts: dict[str, list[str]]) -> Estimate:
    """``mechunlearn run`` from its config and ``experiment.runner.plan``: ``prompts`` maps each
    setting to its fact prompts (before the known-fact filter, so the counts are upper bounds)."""
    stages = [load_stage(shape)]
    stages[0].parts["pristine copy"] = shape.weights  # the runner resets every cell from a clone
    stages[0].hint = "dtype: bfloat16 (on a GPU) or a smaller model"
    cells = work["cells"]
    all_prompts = [p for ps in prompts.values() for p in ps]
    tokens = prompt_tokens(all_prompts)
    stages.append(forward_stage(shape, "known-fact filter", len(all_prompts), 32, tokens, copies=2))
    loc = config.localization
    for method in loc.methods:
        count = sum(1 for m, *_ in work["localizations"] if m == method)
        stages.append(localization_stage(shape, method, loc.n_facts, loc.probe_facts, tokens,
                                         loc.params.get(method, {}), count))
    trained = _trained_per_method(config, shape)
    edit = evaluation = relearning = None
    for name, s in work["settings"].items():
        n_cells = sum(1 for c in cells if c[0] == name) // (len(loc.methods) + 1)
        for method, cfg in s["training"].items():
            step = edit_step_stage(shape, cfg.resolved(True), trained[method], 0, tokens, copies=2,
                                   n_forget=s["forget"])
            step.passes = {k: v * n_cells * s["blocks"] for k, v in step.passes.items()}
            edit = _merge_stage(edit, step)
        ev = s["eval_config"]
        n_eval = s["forget"] * s["blocks"] + max(0, len(prompts[name]) // 2)
        ev_stage = forward_stage(shape, "evaluation batch", n_eval * len(s["formats"]), ev.batch_size, tokens,
                                 copies=2, hint="evaluation.config.batch_size")
        ev_stage.passes = {k: v * n_cells * (len(loc.methods) + 1) for k, v in ev_stage.passes.items()}
        evaluation = _merge_stage(evaluation, ev_stage)
        if "relearn" in s["attacks"]:
            rel = relearn_stage(shape, ev.relearn, s["forget"] * s["blocks"], tokens, copies=2)
            rel.passes = {k: v * n_cells * (len(loc.methods) + 1) for k, v in rel.passes.items()}
            relearning = _merge_stage(relearning, rel)
    stages += [st for st in (edit, evaluation, relearning) if st is not None]
    notes = [f"{len(cells)} cells ({len(config.seeds)} seed(s) x {len(work['settings'])} setting(s) x "
             f"{len(loc.methods) + 1} methods incl. the unedited model), {len(work['localizations'])} localizations",
             "trained parameters per arm: " + ", ".join(f"{m} {n:,}" for m, n in trained.items()),
             "edit-step passes are for the step cap; fact counts are before the known-fact filter (upper bounds)"]
    return Estimate(config.model, stages, notes)


def _trained_per_method(config, shape: ModelShape) -> dict[str, int]:
    """Exempt baselines by their size; the matched arms at budget.params, else at most every MLP
    matrix (the matched size is known only after localizing)."""
    budget = config.localization.budget
    sizes = {"all_mlps": shape.mlp_params(), "everything": shape.block_params()}
    out = {}
    for method in config.localization.methods:
        if method in budget.exempt and method in sizes:
            out[method] = sizes[method]
        else:
            out[method] = budget.params or shape.mlp_params()
    return out


def _merge_stage(old: Stage | None, new: Stage) -> Stage:
    """The larger of two estimates of one stage, with the passes of both."""
    if old is None:
        return new
    big = new if new.total > old.total else old
    passes = {k: old.passes.get(k, 0) + new.passes.get(k, 0) for k in {*old.passes, *new.passes}}
    return Stage(big.name, big.parts, passes, big.hint)


class RunGuard:
    """The checks of ``mechunlearn run``: every stage before loading, the edit step before each cell."""

    def __init__(self, shape: ModelShape, estimate: Estimate, tokens: int, device):
        self.shape, self.estimate, self.tokens, self.device = shape, estimate, tokens, device

    def before_load(self) -> None:
        check_all(self.estimate, self.device)

    def before_cell(self, cfg, n_trained: int, device) -> None:
        step = edit_step_stage(self.shape, cfg.resolved(True), n_trained, 0, self.tokens, copies=2)
        hint = "training.default.grad_accum or the batch sizes (--set training.default.grad_accum=4)"
        check_stage(Stage(step.name, step.parts, hint=hint), device, loaded=True)


def run_guard(config) -> RunGuard:
    """The estimate of a run from its config (the fact files are read, no model is loaded)."""
    from mechunlearn.experiment import facts as run_facts
    from mechunlearn.experiment.runner import plan
    from mechunlearn.models.loading import resolve_device

    device = resolve_device(config.device)
    shape = model_shape(config.model, config.dtype, device)
    prompts = {}
    for setting in config.settings:
        spec = run_facts.resolve_paths(config, setting)
        prompts[setting.name] = [] if spec.dataset == "hub" else [f.prompt for f in run_facts.load_spec(spec)]
    estimate = run_estimate(config, plan(config), shape, prompts)
    tokens = prompt_tokens([p for ps in prompts.values() for p in ps])
    return RunGuard(shape, estimate, tokens, device)
