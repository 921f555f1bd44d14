"""Localization: which components carry a fact? (PAPER.md, "Localization")

``localize(lm, facts, method, seed, **params) -> Localization`` runs one method of ``METHODS``
(``methods.py``; their names and parameters, without torch: ``catalog.py``);
``select(loc, arch, budget | match) -> Selection`` cuts its scores to a trainable-parameter
budget (``budget.py``); ``scores.py`` documents how head and MLP scores aggregate. The names
below are imported on first use (``mechunlearn._lazy``).
"""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.localize.base", ("FunctionLocalizer", "Localization", "Localizer")),
    ("mechunlearn.localize.budget", ("RULES", "Selection", "load_selection", "select")),
    ("mechunlearn.localize.catalog", ("METHOD_NAMES",)),
    ("mechunlearn.localize.methods", ("METHODS", "localize")),
    ("mechunlearn.localize.scores", ("GRANULARITIES",)),
))

__all__ = [
    "GRANULARITIES", "METHODS", "RULES", "Localization", "Localizer", "Selection", "load_selection", "localize",
    "select",
]
