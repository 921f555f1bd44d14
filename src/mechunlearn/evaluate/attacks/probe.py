"""Latent-probe attack: does the residual stream of the edited model still carry the truth?

Per layer L, a multinomial logistic-regression probe (scikit-learn, standardised features)
reads ``blocks.L.hook_resid_post`` at the last token of the training prompt. It is trained on
maintain-train facts labelled with their true answers, its accuracy is measured on the
maintain-test facts, and it is then applied to the edited facts: the fraction it reads as the
TRUE answer and the fraction it reads as the edit target.

Labels are the facts' true answers. A closed answer set gives the classes directly. For an
open relation, the classes are the ``top_answers`` most common true answers among the maintain
facts (each with at least ``min_per_class`` facts); maintain facts with other answers are left
out. A probe can only read answers it was trained on, so edited facts whose true answer (or
edit target) is not a class are not counted in ``reads_true`` (or ``reads_target``); their
numbers are reported. With ``train_on="maintain+forget_half"`` the probe also trains on the
first half of the edited facts (true labels) and reads the other half: needed when the
maintain set has no example of the edited facts' answer (a whole category was edited).
``train_on="auto"`` (the default) uses the maintain facts alone unless none of the edited
facts' true answers is among their answers, and says which it used.

Headline (the paper's aggregation): ``reads_true`` / ``reads_target`` = the mean over the
``headline`` layers of the per-layer fractions; by default the upper half of the model's layers,
where a probe reads an unedited model's answers well. The maximum over layers is no headline: in
the lowest layers the probe barely works and every model, edited or not, scores near chance.
``headline_layers`` and ``headline_rule`` record what was averaged; ``layers`` keeps the curve."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.common import attack_halves
from mechunlearn.facts import Fact, Split
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.probes import fit_probe, resid_post, residuals_at
from mechunlearn.models.scoring import encode

TRAIN_ON = ("auto", "maintain", "maintain+forget_half")
HEADLINE_RULES = ("upper_half", "all")


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

    def __post_init__(self):
        if self.train_on not in TRAIN_ON:
            raise MechunlearnError(f"unknown probe training set {self.train_on!r}: use one of {TRAIN_ON}")
        if isinstance(self.headline, str):
            if self.headline not in HEADLINE_RULES:
                raise MechunlearnError(f"unknown probe headline rule {self.headline!r}: use one of {HEADLINE_RULES} "
                                       "or a list of layers")
        else:
            self.headline = tuple(self.headline)
            if not self.headline or not all(isinstance(L, int) and not isinstance(L, bool) for L in self.headline):
                raise MechunlearnError(f"probe headline layers must be a non-empty list of layer numbers, "
                                       f"got {self.headline!r}")


def headline_layers(rule: str | tuple[int, ...], n_layers: int, probed: list[int]) -> tuple[list[int], str]:
    """The probed layers the headline averages over, and the rule in words."""
    if rule == "upper_half":
        wanted, words = range(n_layers // 2, n_layers), f"the upper half of the {n_layers} layers"
    elif rule == "all":
        wanted, words = range(n_layers), "every layer"
    else:
        missing = sorted(set(rule) - set(probed))
        if missing:
            raise MechunlearnError(f"probe headline layers {missing} are not among the probed layers {probed}")
        wanted, words = rule, f"layers {list(rule)}"
    return [L for L in probed if L in wanted], f"mean over {words} (probed layers only)"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _classes(facts: list[Fact], closed: tuple[str, ...] | None, config: ProbeConfig) -> list[str]:
    counts = Counter(f.target_true for f in facts)
    if closed is not None:
        return [a for a in closed if counts.get(a, 0) > 0]
    common = [a for a, n in counts.most_common() if n >= config.min_per_class]
    return common[: config.top_answers]


def _fraction(hits: list[bool]) -> float | None:
    return float(np.mean(hits)) if hits else None


def probe_attack(lm: LoadedModel, split: Split, config: ProbeConfig | None = None, progress: bool = False) -> dict:
    """Per layer: probe accuracy on maintain-test facts, and how often the probe reads the TRUE
    answer and the edit target for the edited facts."""
    config = config or ProbeConfig()
    start = time.perf_counter()
    closed = split.forget_eval.answers
    layers = list(config.layers) if config.layers is not None else list(range(lm.arch.n_layers))
    bad = [L for L in layers if not 0 <= L < lm.arch.n_layers]
    if bad:
        raise MechunlearnError(f"probe layers {bad} out of range 0..{lm.arch.n_layers - 1}")
    top, rule = headline_layers(config.headline, lm.arch.n_layers, layers)

    train_facts, test_facts = list(split.maintain_train), list(split.maintain_test)
    edited = list(split.forget_eval)
    halves_rule = None
    train_on = config.train_on
    if train_on == "auto":
        seen = set(_classes(train_facts, closed, config))
        train_on = "maintain" if any(f.target_true in seen for f in edited) else "maintain+forget_half"
    if train_on == "maintain+forget_half":
        first, second, halves_rule = attack_halves(split, config.seed)
        train_facts += list(first)
        edited = list(second)
    classes = _classes(train_facts, closed, config)
    if len(classes) < 2:
        raise MechunlearnError(
            f"a probe needs at least 2 answer classes among its training facts, found {classes}"
            + ("" if closed else f" (open relation: answers with >= {config.min_per_class} facts)")
        )
    train_facts = [f for f in train_facts if f.target_true in classes]
    test_facts = [f for f in test_facts if f.target_true in classes]
    if not test_facts:
        raise MechunlearnError("no maintain-test fact has an answer among the probe classes: cannot measure accuracy")
    readable_true = [f.target_true in classes for f in edited]
    readable_new = [f.target_new in classes for f in edited]

    groups = [train_facts, test_facts, edited]
    prompts = [f.prompt for g in groups for f in g]
    batch = encode(lm.tokenizer, prompts)
    acts = residuals_at(lm, batch, batch.last_index, [resid_post(L) for L in layers], config.batch_size, progress)
    n_tr, n_te = len(train_facts), len(test_facts)
    y_train = np.array([f.target_true for f in train_facts])
    y_test = np.array([f.target_true for f in test_facts])

    per_layer = []
    for L in tqdm(layers, desc="probes", disable=not progress, leave=False):
        x = acts[resid_post(L)]
        probe = fit_probe(x[:n_tr], y_train, config.C, config.max_iter, seed=config.seed)
        accuracy = float((probe.predict(x[n_tr:n_tr + n_te]) == y_test).mean())
        proba = probe.predict_proba(x[n_tr + n_te:])
        labels = list(probe.classes_)
        read = [labels[i] for i in proba.argmax(1)]
        per_layer.append({
            "layer": L,
            "accuracy": accuracy,
            "reads_true": _fraction([r == f.target_true for r, f, ok in zip(read, edited, readable_true, strict=True) if ok]),
            "reads_target": _fraction([r == f.target_new for r, f, ok in zip(read, edited, readable_new, strict=True) if ok]),
            "p_true": _fraction([proba[i, labels.index(f.target_true)] for i, f in enumerate(edited) if readable_true[i]]),
            "p_target": _fraction([proba[i, labels.index(f.target_new)] for i, f in enumerate(edited) if readable_new[i]]),
        })
    best = max(per_layer, key=lambda r: (r["accuracy"], r["layer"]))
    top_rows = [r for r in per_layer if r["layer"] in top]
    notes = []
    if not top:
        notes.append(f"no probed layer falls under the headline rule ({rule}): no headline")
    if not all(readable_true):
        notes.append(f"{len(edited) - sum(readable_true)} edited facts have a true answer the probe was not trained on")
    if not all(readable_new):
        notes.append(f"{len(edited) - sum(readable_new)} edited facts have an edit target the probe was not trained on")
    return {
        "config": asdict(config),
        "classes": [c.strip() for c in classes],
        "chance": float(Counter(y_test).most_common(1)[0][1] / len(y_test)),
        "n_train": n_tr,
        "n_test": n_te,
        "edited_facts": [f.id for f in edited],
        "n_readable_true": int(sum(readable_true)),
        "n_readable_target": int(sum(readable_new)),
        "train_on": train_on,
        "halves": halves_rule,
        "layers": per_layer,
        "headline_layers": top,
        "headline_rule": rule,
        "reads_true": _mean([r["reads_true"] for r in top_rows]),
        "reads_target": _mean([r["reads_target"] for r in top_rows]),
        "best_layer": best["layer"],
        "reads_true_best": best["reads_true"],
        "reads_target_best": best["reads_target"],
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }
