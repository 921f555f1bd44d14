"""Per-layer linear probes: where does the attribute become decodable?

A multinomial logistic regression (standardised features, L2, sklearn) is fit per residual
stream point on the hidden state at the subject's LAST token, and scored by seeded stratified
k-fold cross-validated BALANCED accuracy (mean recall per class; chance = 1 / classes) over the
facts: held-out facts, so memorising an athlete does not count, and an unbalanced sample does
not pass for knowledge. Probes need data: with ~30 facts the curves are noisy, so FLU accepts
separate, larger ``probe_facts``. Two inputs:

* ``subject``: BOS + the subject alone, tokenized as it appears in the prompt (with its leading
  space), e.g. ``<bos> Peyton Manning``;
* ``prompt``: the full training prompt.

Points: index 0 is the residual entering layer 0 (the embeddings), index ``l+1`` the residual
after block ``l`` (so the climb between points ``l`` and ``l+1`` is due to block ``l``).

Classes: closed answer sets use the true answers; open relations (CounterFact) use the most
frequent true answers among the facts (at most ``max_classes``, each with at least
``min_per_class`` facts); facts with other answers are left out of the probe.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mechunlearn.facts import FactSet
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.scoring import Encoded, batched, encode


@dataclass
class ProbeCurves:
    classes: list[str]
    n_facts: int  # facts probed
    chance: float
    subject: list[float]  # CV accuracy per residual point (n_layers + 1)
    prompt: list[float]
    folds: int
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def probe_classes(facts: FactSet, max_classes: int = 8, min_per_class: int = 4) -> list[str]:
    counts = Counter(f.target_true for f in facts)
    if facts.closed:
        return [a for a in facts.answers if counts[a] >= 2]
    common = [a for a, n in counts.most_common() if n >= min_per_class][:max_classes]
    return common


def subject_alone(tokenizer, facts: FactSet) -> Encoded:
    """BOS + each subject as it appears in its prompt (leading space kept), right padded."""
    rows = []
    for f in facts:
        start = f.prompt.rfind(f.subject)
        text = (" " if start > 0 and f.prompt[start - 1] == " " else "") + f.subject
        ids = tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id, *ids]
        rows.append(ids)
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return Encoded(ids, mask, mask.sum(1) - 1)


def residual_at(lm: LoadedModel, batch: Encoded, position: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Residual stream at ``position`` ([B] token index) for every point: [n_layers + 1, B, d]."""
    arch = lm.arch
    names = residual_names(arch.n_layers)
    out = []
    for rows in batched(len(batch), batch_size):
        part = batch.rows(rows).to(lm.device)
        pos = position[rows].to(lm.device)
        with torch.no_grad(), cache_activations(lm.model, names) as cache:
            lm.model.base_model(input_ids=part.input_ids, attention_mask=part.attention_mask, use_cache=False)
        idx = torch.arange(len(part), device=lm.device)
        out.append(torch.stack([cache[n][idx, pos].float().cpu() for n in names]))
    return torch.cat(out, 1).numpy()


def cv_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int, C: float = 0.1) -> float:
    """Cross-validated balanced accuracy of a standardised multinomial logistic regression."""
    predicted = np.empty_like(y)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="newton-cg", max_iter=500))
        clf.fit(x[train], y[train])
        predicted[test] = clf.predict(x[test])
    return float(balanced_accuracy_score(y, predicted))


def residual_names(n_layers: int) -> list[str]:
    return ["blocks.0.hook_resid_pre", *[f"blocks.{L}.hook_resid_post" for L in range(n_layers)]]


def probe_curves(lm: LoadedModel, facts: FactSet, prompt_batch: Encoded | None = None, seed: int = 0,
                 max_folds: int = 5, max_classes: int = 8, min_per_class: int = 4,
                 prompt_cache: dict | None = None) -> ProbeCurves | None:
    """Cross-validated probe accuracy per residual point; None if fewer than 2 classes can be
    probed. ``prompt_batch`` (the facts' prompts encoded with subjects) and ``prompt_cache``
    (their residuals, ``residual_names``) may come from a run the caller already made."""
    if prompt_batch is None:
        prompt_batch = encode(lm.tokenizer, [f.prompt for f in facts], [f.subject for f in facts])
        prompt_cache = None
    classes = probe_classes(facts, max_classes, min_per_class)
    keep = [i for i, f in enumerate(facts) if f.target_true in classes]
    labels = np.array([classes.index(facts.facts[i].target_true) for i in keep])
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        return None
    folds = int(min(max_folds, min(np.bincount(labels)[present])))
    if folds < 2:
        return None
    kept = facts.subset([facts.facts[i] for i in keep])
    alone = subject_alone(lm.tokenizer, kept)
    in_prompt = prompt_batch.rows(torch.tensor(keep))
    subject_last = torch.tensor([int(row.nonzero().max()) for row in in_prompt.subject_mask])
    x_alone = residual_at(lm, alone, alone.last_index)
    if prompt_cache is not None:
        rows = torch.tensor(keep)
        x_prompt = torch.stack([prompt_cache[n][rows, subject_last.to(prompt_cache[n].device)].float().cpu()
                                for n in residual_names(lm.arch.n_layers)]).numpy()
    else:
        x_prompt = residual_at(lm, in_prompt, subject_last)
    curves = {name: [cv_accuracy(x[p], labels, folds, seed) for p in range(x.shape[0])]
              for name, x in (("subject", x_alone), ("prompt", x_prompt))}
    chance = 1.0 / len(present)
    return ProbeCurves([c.strip() for c in classes], len(keep), chance, curves["subject"], curves["prompt"], folds)
