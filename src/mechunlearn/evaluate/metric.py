"""A headline metric's declaration: its name, label and direction, read by the report. The
evaluation's own metrics are listed in ``headline.py``, each attack's in its registry entry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    robustness: bool  # an "other format / attack" metric, where the paper's claim shows
