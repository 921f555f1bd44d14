"""Fact sets: records, loaders, splits and which facts a model knows. The names below are
imported on first use (``mechunlearn._lazy``): only ``known`` needs torch."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.facts.known", ("KnownReport", "answer_probs", "filter_known")),
    ("mechunlearn.facts.loaders", ("load_builtin_athletes", "load_counterfact", "load_facts", "load_sports",
                                   "load_table")),
    ("mechunlearn.facts.records", ("Fact", "FactSet")),
    ("mechunlearn.facts.splits", ("Split", "halves", "sequential_blocks", "split_facts", "split_from_facts")),
))

__all__ = [
    "Fact", "FactSet", "KnownReport", "Split", "answer_probs", "filter_known", "halves", "load_builtin_athletes",
    "load_counterfact", "load_facts", "load_sports", "load_table", "sequential_blocks", "split_facts",
    "split_from_facts",
]
