"""Simulated experiments with a planted FLU-minus-other difference, for checking the verdict's
instruments: every seed draws its own facts, so a fact's paired difference is the planted effect
plus a seed effect (shared by the seed's facts) plus its own noise."""

from __future__ import annotations

import numpy as np


def experiments(n: int, seeds: int, facts: int, effect: float, seed_sd: float, fact_sd: float,
                rng: np.random.Generator) -> np.ndarray:
    """``n`` experiments of per-fact paired differences, shape (n, seeds, facts)."""
    seed_effects = rng.normal(0.0, seed_sd, size=(n, seeds, 1))
    return effect + seed_effects + rng.normal(0.0, fact_sd, size=(n, seeds, facts))
