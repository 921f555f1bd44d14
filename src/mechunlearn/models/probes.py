"""The one per-layer linear probe: FLU's probe curves and the latent-probe attack both use it.

Residuals are read through the hook layer at one token per prompt; a probe is a standardised
multinomial logistic regression (scikit-learn, L2), fit per residual point. Points: index 0 is
the residual entering layer 0 (``blocks.0.hook_resid_pre``), index ``l + 1`` the residual after
block ``l`` (``blocks.l.hook_resid_post``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from mechunlearn.models.encoding import Encoded
from mechunlearn.models.hooks import cache_activations
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.prefix import MIN_PREFIX, PrefixKV, forward_suffix, shared_prefix_length
from mechunlearn.models.scoring import batched

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def residual_names(n_layers: int) -> list[str]:
    """Every residual point: the embeddings, then the residual after each block."""
    return ["blocks.0.hook_resid_pre", *[f"blocks.{L}.hook_resid_post" for L in range(n_layers)]]


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def residuals_at(lm: LoadedModel, batch: Encoded, position: torch.Tensor, names: list[str], batch_size: int = 32,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """The residual ``names`` at token ``position`` ([B] index) of each row: {name: [B, d_model]} in float32.
    The prompts' common prefix (up to the earliest position read) runs once; each chunk is cut to
    its longest row (right padding), so a long prompt does not pad the others."""
    P = min(shared_prefix_length(batch), int(position.min()))
    prefix = None
    if len(batch) > 1 and P >= MIN_PREFIX:
        with torch.no_grad():
            prefix = PrefixKV.run(lm.model, batch.input_ids[:1, :P].to(lm.device), batch.attention_mask[:1, :P].to(lm.device))
    else:
        P = 0
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    chunks = list(batched(len(batch), batch_size))
    for rows in tqdm(chunks, desc="probe residuals", disable=not progress, leave=False):
        part = batch.rows(rows)
        width = int(part.attention_mask.sum(1).max())
        ids, mask = part.input_ids[:, :width].to(lm.device), part.attention_mask[:, :width].to(lm.device)
        pos = position[rows].to(lm.device) - P
        with torch.no_grad(), cache_activations(lm.model, names) as cache:
            if prefix is None:
                lm.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            else:
                forward_suffix(lm.model, prefix, torch.zeros(len(part), dtype=torch.long), ids[:, P:], mask)
        index = torch.arange(len(part), device=lm.device)
        for n in names:
            out[n].append(cache[n][index, pos].float().cpu())
    return {n: torch.cat(v).numpy() for n, v in out.items()}


def fit_probe(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, solver: str = "lbfgs", seed: int = 0) -> Pipeline:
    """A standardised multinomial logistic regression fit on ``x`` [n, d] with labels ``y``."""
    # scikit-learn is imported here, not at the top: it costs 2 s of every command's start-up
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver=solver, max_iter=max_iter,
                                                               random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny, separable sets
        probe.fit(x, y)
    return probe


def cv_balanced_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int, C: float = 0.1, max_iter: int = 500,
                         solver: str = "newton-cg") -> float:
    """Seeded stratified k-fold cross-validated balanced accuracy (mean recall per class) of ``fit_probe``."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    predicted = np.empty_like(y)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y):
        predicted[test] = fit_probe(x[train], y[train], C, max_iter, solver, seed).predict(x[test])
    return float(balanced_accuracy_score(y, predicted))
