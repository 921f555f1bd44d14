"""The built-in attacks, registered in the order every evaluation runs them: their settings,
their headline numbers and curves, and their memory cost. Importable without torch: a run's
config and the command line check attack settings before any model is loaded; the attacks
themselves are ``relearn.py``, ``probe.py`` and ``softprompt.py``."""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.registry import Attack, CurvePlot, register
from mechunlearn.evaluate.metric import Metric
from mechunlearn.registry import bind

# ---- relearning (relearn.py)

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
    # 2: the attack runs again with the halves swapped, so every edited fact is scored once, on twice
    # the facts per seed, at twice the attack's cost (1: the paper's one attack)
    folds: int = 1

    def __post_init__(self):
        if self.folds not in (1, 2) or isinstance(self.folds, bool):
            raise MechunlearnError(f"relearning folds must be 1 or 2, got {self.folds!r}")
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


def relearn_headline(result: dict) -> dict[str, float | None]:
    return {"relearn.p_true_before": result["p_true_before"], "relearn.p_true_after": result["p_true_after"],
            "relearn.error": result["relearning_error"]}


def relearn_curves(result: dict) -> dict[str, list[list[float]]]:
    return {"relearn": [[p["step"], p["p_true"]] for p in result["curve"] if p.get("p_true") is not None]}


# ---- latent probes (probe.py)

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


def probe_headline(result: dict) -> dict[str, float | None]:
    return {"probe.truth": result["reads_true"], "probe.target": result["reads_target"],
            "probe.truth_best_layer": result["reads_true_best"], "probe.target_best_layer": result["reads_target_best"],
            # no layer: the probe was skipped
            "probe.best_layer_accuracy": max((r["accuracy"] for r in result["layers"]), default=None)}


def probe_curves(result: dict) -> dict[str, list[list[float]]]:
    layers = result["layers"]
    return {"probe_truth": [[r["layer"], r["reads_true"]] for r in layers if r.get("reads_true") is not None],
            "probe_target": [[r["layer"], r["reads_target"]] for r in layers if r.get("reads_target") is not None]}


# ---- soft prompts (softprompt.py)


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


def softprompt_headline(result: dict) -> dict[str, float | None]:
    """The first evaluated format unprefixed (``softprompt.error``), the others by name."""
    out = {}
    for i, (fmt, value) in enumerate(result["p_true_after"].items()):
        prefix = "softprompt" if i == 0 else f"softprompt.{fmt}"
        out[f"{prefix}.p_true_before"] = result["p_true_before"][fmt]
        out[f"{prefix}.p_true_after"] = value
        out[f"{prefix}.p_true_random"] = result["p_true_random"][fmt]
        out[f"{prefix}.error"] = None if value is None else 1 - value
    return out


# ---- the registry, in the order every evaluation runs them

register(Attack(
    "relearn", RelearnConfig, bind("mechunlearn.evaluate.attacks.relearn:relearn"), stage=None,
    metrics=(Metric("relearn.error", "relearning error, 1 - P(true) after relearning", True, True),),
    headline=relearn_headline, curves=relearn_curves, cost=bind("mechunlearn.models.memory:relearn_stage"),
    # relearning the truth into a model that never lost it measures nothing: the unedited model's
    # P(true) is the "before" of every other cell
    attacks_unedited=False,
    plots=(CurvePlot("relearn", "relearn", "relearning", "relearning step", "P(true) on held-out forgotten facts"),),
))
register(Attack(
    "probe", ProbeConfig, bind("mechunlearn.evaluate.attacks.probe:probe_attack"), stage="probes",
    metrics=(Metric("probe.truth", "probe reads the true answer (mean over the upper half of the layers)", False, True),
             Metric("probe.target", "probe reads the edit target (mean over the upper half of the layers)", True, True)),
    headline=probe_headline, curves=probe_curves,
    plots=(CurvePlot("probe_truth", "probe", "latent probes", "layer", "probe reads the TRUE answer"),),
))
register(Attack(
    "softprompt", SoftPromptConfig, bind("mechunlearn.evaluate.attacks.softprompt:softprompt_attack"),
    stage="soft prompts", metrics=(Metric("softprompt.error", "1 - P(true) under a soft-prompt attack", True, True),),
    headline=softprompt_headline,
))
