from mechunlearn.facts.known import KnownReport, answer_probs, filter_known
from mechunlearn.facts.loaders import (
    load_builtin_athletes,
    load_counterfact,
    load_facts,
    load_sports,
    load_table,
)
from mechunlearn.facts.records import Fact, FactSet
from mechunlearn.facts.splits import (
    Split,
    halves,
    sequential_blocks,
    split_facts,
    split_from_facts,
)

__all__ = [
    "Fact", "FactSet", "KnownReport", "Split", "answer_probs", "filter_known", "halves", "load_builtin_athletes",
    "load_counterfact", "load_facts", "load_sports", "load_table", "sequential_blocks", "split_facts",
    "split_from_facts",
]
