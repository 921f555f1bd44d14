"""Baselines (no model run):

* ``random``: seeded uniform scores for every trainable matrix (every matrix type eligible, the
  gate included; default granularity ``matrix``); needs a budget.
* ``random_mlps``: seeded uniform scores per MLP layer (all its matrices share the score);
  needs a budget.
* ``all_mlps``: every MLP matrix, chosen.
* ``everything``: every attention and MLP matrix ("non-localized"), chosen.
"""

from __future__ import annotations

import torch

from mechunlearn.facts import FactSet
from mechunlearn.localize.scores import AGGREGATION
from mechunlearn.models.loading import LoadedModel


def _uniform(n: int, seed: int) -> list[float]:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()


def random_components(lm: LoadedModel, facts: FactSet, seed: int):
    names = [c.name for c in lm.arch.matrices()]
    scores = dict(zip(names, _uniform(len(names), seed), strict=True))
    return scores, {"granularity": "matrix", "rule": f"uniform random score per matrix, seed {seed}",
                    "aggregation": AGGREGATION}, []


def random_mlps(lm: LoadedModel, facts: FactSet, seed: int):
    arch = lm.arch
    draws = _uniform(arch.n_layers, seed)
    scores = {c.name: draws[c.layer] for c in arch.matrices(blocks=("mlp",))}
    return scores, {"granularity": "layer", "rule": f"uniform random score per MLP layer, seed {seed}",
                    "aggregation": AGGREGATION}, []


def all_mlps(lm: LoadedModel, facts: FactSet, seed: int):
    names = [c.name for c in lm.arch.matrices(blocks=("mlp",))]
    return dict.fromkeys(names, 1.0), {"granularity": "layer", "rule": "every MLP matrix"}, names


def everything(lm: LoadedModel, facts: FactSet, seed: int):
    names = [c.name for c in lm.arch.matrices()]
    return dict.fromkeys(names, 1.0), {"granularity": "layer", "rule": "every attention and MLP matrix"}, names
