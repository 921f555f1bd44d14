"""Fact records in the vocabulary editing users know (EasyEdit: prompt, subject, target_new,
ground truth, rephrase, locality)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from mechunlearn.errors import FactDataError


@dataclass(frozen=True)
class Fact:
    id: str
    subject: str
    prompt: str  # the training format, ending right before the answer
    target_true: str  # with its leading space, as it follows the prompt
    target_new: str | None = None  # the edit target
    relation: str = ""
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()  # other subjects, same relation and true answer: must not change
    question: str | None = None  # a natural question ("What sport does X play?")
    mc_choices: tuple[str, ...] = ()  # answer options for the multiple-choice format, the true one included

    def with_target(self, target_new: str) -> Fact:
        return replace(self, target_new=target_new)


@dataclass(frozen=True)
class FactSet:
    name: str
    facts: tuple[Fact, ...]
    answers: tuple[str, ...] | None = None  # closed answer set (normalise over it); None = open vocabulary
    edit_only_answers: tuple[str, ...] = ()  # in `answers` only as edit targets (sports: " golf")
    system: str = ""  # system line of the question/answer format
    source: str = ""  # where the facts came from
    notes: tuple[str, ...] = field(default=())  # e.g. "answers scored by their first token"
    # facts no one evaluates (a run's localization facts, else maintain-train facts), at most one per
    # relation: the solved example a question/answer prompt shows for a fact of that relation
    examples: tuple[Fact, ...] = ()

    def __post_init__(self):
        if not self.facts:
            raise FactDataError(f"fact set {self.name!r} is empty")
        ids = [f.id for f in self.facts]
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise FactDataError(f"fact set {self.name!r} has duplicate fact ids {repeated[:5]}: ids must be unique")

    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self):
        return iter(self.facts)

    @property
    def closed(self) -> bool:
        return self.answers is not None

    @property
    def relation_answers(self) -> tuple[str, ...] | None:
        """The answers a fact of this relation can truly have (what "knowing" normalises over)."""
        return None if self.answers is None else tuple(a for a in self.answers if a not in self.edit_only_answers)

    def subset(self, facts, name: str | None = None) -> FactSet:
        return replace(self, facts=tuple(facts), name=name or self.name)

    def with_examples(self, examples) -> FactSet:
        return replace(self, examples=tuple(examples))

    def example_for(self, relation: str) -> Fact | None:
        """The solved example of ``relation`` (a fact with a question), never one of these facts."""
        own = {f.id for f in self.facts}
        return next((e for e in self.examples if e.relation == relation and e.question and e.id not in own), None)

    @property
    def relations(self) -> list[str]:
        return sorted({f.relation for f in self.facts})

    def of_relation(self, relation: str | None) -> FactSet:
        """The facts of ``relation`` (all of them for None); an unknown relation is an error that
        lists the relations there are."""
        if relation is None:
            return self
        chosen = [f for f in self.facts if f.relation == relation]
        if not chosen:
            there = [r for r in self.relations if r]
            raise FactDataError(f"no fact of {self.name!r} has the relation {relation!r}; "
                                + (f"its relations are {', '.join(map(repr, there))}" if there else
                                   "its facts carry no relation (a 'relation' column names each fact's)"))
        return self.subset(chosen)

    def by_id(self, ids) -> FactSet:
        index = {f.id: f for f in self.facts}
        missing = [i for i in ids if i not in index]
        if missing:
            raise FactDataError(f"facts not in {self.name!r}: {missing[:5]}")
        return self.subset([index[i] for i in ids])

    def count_by_answer(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.facts:
            counts[f.target_true.strip()] = counts.get(f.target_true.strip(), 0) + 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "answers": self.answers,
            "edit_only_answers": self.edit_only_answers,
            "system": self.system,
            "source": self.source,
            "notes": list(self.notes),
            "facts": [asdict(f) for f in self.facts],
        }
