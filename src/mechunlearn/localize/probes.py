"""Per-layer linear probes: where does the attribute become decodable?

The shared probe (``models/probes.py``: a standardised multinomial logistic regression) is fit per residual
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

from mechunlearn.facts import FactSet
from mechunlearn.models.encoding import Encoded, encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.probes import cv_balanced_accuracy, residual_names, residuals_at


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
    names = residual_names(lm.arch.n_layers)
    x_alone = residuals_at(lm, alone, alone.last_index, names)
    if prompt_cache is not None:
        rows = torch.tensor(keep)
        x_prompt = {n: prompt_cache[n][rows, subject_last.to(prompt_cache[n].device)].float().cpu().numpy()
                    for n in names}
    else:
        x_prompt = residuals_at(lm, in_prompt, subject_last, names)
    curves = {kind: [cv_balanced_accuracy(x[n], labels, folds, seed) for n in names]
              for kind, x in (("subject", x_alone), ("prompt", x_prompt))}
    chance = 1.0 / len(present)
    return ProbeCurves([c.strip() for c in classes], len(keep), chance, curves["subject"], curves["prompt"], folds)
