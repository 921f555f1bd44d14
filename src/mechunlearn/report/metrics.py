"""The report reads the metric declarations of ``evaluate/headline.py``: every cell of a run
carries a flat ``{metric: value}`` dict with those names, each oriented so the report can say
which method did better."""

from __future__ import annotations

from mechunlearn.evaluate.headline import METRICS, Metric

__all__ = ["METRICS", "Metric", "present"]


def present(cells: list[dict]) -> list[Metric]:
    """The registered metrics that at least one cell reports, in registry order."""
    seen = {k for c in cells for k, v in c.get("metrics", {}).items() if v is not None}
    return [m for name, m in METRICS.items() if name in seen]
