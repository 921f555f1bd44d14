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
``headline_layers`` and ``headline_rule`` record what was averaged; ``layers`` keeps the curve.

Answers that do not repeat (capital cities, languages: an open relation with too few facts per
answer for classes) get the pairwise probe instead (``form``, see :func:`pairwise_probe`): a ridge
map from the residual to answer embeddings, fit on maintain-train facts, that reads an edited fact
as its true answer or its edit target, whichever embedding the mapped residual lies closer to. It
reads answers it never saw in training; chance is 0.5. ``form="auto"`` (the default) keeps the
class probe for closed sets and for open relations whose classes can read an edited fact's answer."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.catalog import ProbeConfig
from mechunlearn.evaluate.attacks.common import attack_halves
from mechunlearn.facts import Fact, Split
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.probes import fit_probe, resid_post, residuals_at


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


def _class_plan(split: Split, closed: tuple[str, ...] | None, config: ProbeConfig) -> dict | str:
    """The answer-class probe's facts and classes, or why it cannot be formed."""
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
        return (f"a probe needs at least 2 answer classes among its training facts, found {classes}"
                + ("" if closed else f" (open relation: answers with >= {config.min_per_class} facts)"))
    test_facts = [f for f in test_facts if f.target_true in classes]
    if not test_facts:
        return "no maintain-test fact has an answer among the probe classes: cannot measure accuracy"
    return {"train": [f for f in train_facts if f.target_true in classes], "test": test_facts, "edited": edited,
            "classes": classes, "train_on": train_on, "halves": halves_rule,
            "readable_true": [f.target_true in classes for f in edited],
            "readable_new": [f.target_new in classes for f in edited]}


def probe_attack(lm: LoadedModel, split: Split, config: ProbeConfig | None = None, progress: bool = False) -> dict:
    """Per layer: probe accuracy on maintain-test facts, and how often the probe reads the TRUE
    answer and the edit target for the edited facts. ``config.form`` picks the probe: answer
    classes, or (answers that do not repeat) the pairwise probe of :func:`pairwise_probe`."""
    config = config or ProbeConfig()
    start = time.perf_counter()
    closed = split.forget_eval.answers
    layers = list(config.layers) if config.layers is not None else list(range(lm.arch.n_layers))
    bad = [L for L in layers if not 0 <= L < lm.arch.n_layers]
    if bad:
        raise MechunlearnError(f"probe layers {bad} out of range 0..{lm.arch.n_layers - 1}")
    top, rule = headline_layers(config.headline, lm.arch.n_layers, layers)
    form, why = config.form, None
    plan = _class_plan(split, closed, config) if form != "pairwise" else None
    if form == "auto":
        form = "classes"
        if closed is None and (isinstance(plan, str) or not any(plan["readable_true"])):
            form = "pairwise"
            why = (f"answer classes do not fit this open relation ({plan})" if isinstance(plan, str) else
                   "answer classes do not fit this open relation (no edited fact's true answer is a class)")
    if form == "classes" and isinstance(plan, str):
        raise MechunlearnError(plan)
    body = (_class_probe(lm, plan, layers, config, progress) if form == "classes"
            else pairwise_probe(lm, split, layers, config, progress))
    per_layer = body.pop("layers")
    top_rows = [r for r in per_layer if r["layer"] in top]
    if why:
        why = f"{why}: the pairwise probe tells the true answer from the edit target instead"
    notes = [why] if why else []
    if not top and per_layer:
        notes.append(f"no probed layer falls under the headline rule ({rule}): no headline")
    notes += body.pop("notes")
    best = max(per_layer, key=lambda r: (r["accuracy"], r["layer"])) if per_layer else {}
    return {
        "config": asdict(config),
        "form": form,
        "form_reason": why,  # None: the configured form, or the class probe
        **body,
        "layers": per_layer,
        "headline_layers": top,
        "headline_rule": rule,
        "reads_true": _mean([r["reads_true"] for r in top_rows]),
        "reads_target": _mean([r["reads_target"] for r in top_rows]),
        "best_layer": best.get("layer"),
        "reads_true_best": best.get("reads_true"),
        "reads_target_best": best.get("reads_target"),
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def _class_probe(lm: LoadedModel, plan: dict, layers: list[int], config: ProbeConfig, progress: bool) -> dict:
    train_facts, test_facts, edited = plan["train"], plan["test"], plan["edited"]
    classes, readable_true, readable_new = plan["classes"], plan["readable_true"], plan["readable_new"]
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
    notes = []
    if not all(readable_true):
        notes.append(f"{len(edited) - sum(readable_true)} edited facts have a true answer the probe was not trained on")
    if not all(readable_new):
        notes.append(f"{len(edited) - sum(readable_new)} edited facts have an edit target the probe was not trained on")
    return {
        "classes": [c.strip() for c in classes],
        "chance": float(Counter(y_test).most_common(1)[0][1] / len(y_test)),
        "n_train": n_tr,
        "n_test": n_te,
        "edited_facts": [f.id for f in edited],
        "n_readable_true": int(sum(readable_true)),
        "n_readable_target": int(sum(readable_new)),
        "train_on": plan["train_on"],
        "halves": plan["halves"],
        "layers": per_layer,
        "notes": notes,
    }


# ---- the pairwise probe: open answers that do not repeat ------------------------------------

PAIRWISE_RULE = ("a ridge map from the residual (standardised) to the unit output embedding of the true answer's "
                 "first token, fit on maintain-train facts (penalty chosen by leave-one-out); it reads the true "
                 "answer when the mapped residual lies closer to the true answer's embedding than to the edit "
                 "target's (maintain facts: than to a seeded other answer of the same relation); chance 0.5")


class PairProbe:
    """A linear map from residuals to answer embeddings: ``scores(x, u)`` = <map(x), u> row by row.
    Answers never seen in training can be read: the map lands in the space of every answer."""

    def __init__(self, x: np.ndarray, targets: np.ndarray):
        # imported here: scikit-learn costs seconds of start-up
        from sklearn.linear_model import RidgeCV

        self.mean = x.mean(0)
        self.scale = x.std(0) + 1e-6
        self.ridge = RidgeCV(alphas=np.logspace(-2, 5, 15), fit_intercept=True).fit(self._z(x), targets)

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def scores(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """<map(x_i), u_i> per row, the map without its intercept (a residual that carries nothing
        about the answer scores every answer alike, whatever the answers' frequency in training)."""
        mapped = self._z(x) @ np.atleast_2d(self.ridge.coef_).T
        return (mapped * u).sum(1)


def pairwise_probe(lm: LoadedModel, split: Split, layers: list[int], config: ProbeConfig, progress: bool) -> dict:
    """The probe for answers that do not repeat: per layer, does the residual read the true answer
    rather than the edit target (:data:`PAIRWISE_RULE`)? ``layers`` rows as the class probe's, with
    ``reads_true`` + ``reads_target`` = 1 on facts with an edit target. A split it cannot be fit on
    gives no rows and a ``skipped`` reason."""
    tok = lm.tokenizer
    first = {}

    def token(answer: str) -> int:
        if answer not in first:
            ids = tok.encode(answer, add_special_tokens=False)
            first[answer] = ids[0] if ids else -1
        return first[answer]

    rng = random.Random(f"pairwise:{config.seed}")
    by_relation: dict[str, list[str]] = {}
    for f in [*split.maintain_train, *split.maintain_test]:
        by_relation.setdefault(f.relation, [])
        if f.target_true not in by_relation[f.relation]:
            by_relation[f.relation].append(f.target_true)

    def other(f: Fact, use_target: bool) -> str | None:
        if use_target and f.target_new and token(f.target_new) != token(f.target_true):
            return f.target_new
        pool = [a for a in by_relation.get(f.relation, []) if token(a) != token(f.target_true) and token(a) >= 0]
        return rng.choice(pool) if pool else None

    train = [f for f in split.maintain_train if token(f.target_true) >= 0]
    test = [(f, o) for f in split.maintain_test if token(f.target_true) >= 0 for o in [other(f, True)] if o]
    edited = [(f, o) for f in split.forget_eval if token(f.target_true) >= 0 for o in [other(f, True)] if o]
    with_target = [o == f.target_new for f, o in edited]
    common = {"classes": None, "chance": 0.5, "n_train": len(train), "n_test": len(test),
              "edited_facts": [f.id for f, _ in edited], "n_readable_true": len(edited),
              "n_readable_target": int(sum(with_target)), "train_on": "maintain", "halves": None,
              "pairwise_rule": PAIRWISE_RULE}
    reason = (f"only {len(train)} maintain-train facts to fit on" if len(train) < 2 else
              "no maintain-test fact has an answer to tell its own from" if not test else
              "no edited fact has an edit target (or another answer) to tell its true answer from" if not edited
              else None)
    if reason:
        return {**common, "skipped": f"latent probe skipped: {reason}", "layers": [],
                "notes": [f"latent probe skipped: {reason}"]}
    facts = [*train, *(f for f, _ in test), *(f for f, _ in edited)]
    batch = encode(tok, [f.prompt for f in facts])
    acts = residuals_at(lm, batch, batch.last_index, [resid_post(L) for L in layers], config.batch_size, progress)
    head = lm.model.get_output_embeddings().weight

    def vectors(answers: list[str]) -> np.ndarray:
        with torch.no_grad():
            u = head[torch.tensor([token(a) for a in answers], device=head.device)].float().cpu()
        return (u / u.norm(dim=1, keepdim=True).clamp_min(1e-8)).numpy()

    u_train = vectors([f.target_true for f in train])
    u_test_true, u_test_other = vectors([f.target_true for f, _ in test]), vectors([o for _, o in test])
    u_ed_true, u_ed_other = vectors([f.target_true for f, _ in edited]), vectors([o for _, o in edited])
    n_tr, n_te = len(train), len(test)
    per_layer = []
    for L in tqdm(layers, desc="pairwise probes", disable=not progress, leave=False):
        x = acts[resid_post(L)]
        probe = PairProbe(x[:n_tr], u_train)
        x_te, x_ed = x[n_tr:n_tr + n_te], x[n_tr + n_te:]
        margin_test = probe.scores(x_te, u_test_true) - probe.scores(x_te, u_test_other)
        margin = probe.scores(x_ed, u_ed_true) - probe.scores(x_ed, u_ed_other)
        targeted = [m for m, t in zip(margin, with_target, strict=True) if t]
        per_layer.append({
            "layer": L,
            "accuracy": float((margin_test > 0).mean()),
            "reads_true": float((margin > 0).mean()),
            "reads_target": _fraction([m < 0 for m in targeted]),
            "p_true": None,  # the map's scores are no probabilities
            "p_target": None,
        })
    notes = []
    if len(edited) < len(split.forget_eval):
        notes.append(f"{len(split.forget_eval) - len(edited)} edited facts have no other answer (with another "
                     "first token) to tell their true answer from: left out")
    if edited and not all(with_target):
        notes.append(f"{len(edited) - sum(with_target)} edited facts have no edit target: read against a seeded "
                     "other answer of their relation")
    return {**common, "layers": per_layer, "notes": notes}
