"""One evaluation of one model (``evaluate_run``): what was asked and how, the per-format results
of the edited and the maintain facts, the side effects, the attacks, their flat ``aggregates`` and
the per-fact ``rows``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from mechunlearn.errors import MechunlearnError


@dataclass
class EvaluationResult:
    model: str
    source: str
    config: dict  # the evaluation's settings, with the formats and attacks run
    templates: dict
    seeds: dict[str, int]
    facts: dict
    split: dict
    forget: dict  # the edited facts in each format
    side_effects: dict  # maintain and unrelated facts, LM loss, MMLU
    attacks: dict[str, dict]  # by name, in the registry's order
    aggregates: dict[str, float | None] = field(default_factory=dict)  # evaluate/headline.py
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # keys a later version added, kept as read

    def to_json(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> EvaluationResult:
        names = [f.name for f in fields(cls) if f.name != "extra"]
        missing = [n for n in names if n not in data]
        if not isinstance(data, dict) or missing:
            raise MechunlearnError(f"an evaluation result lacks {missing or 'its keys'}; evaluate the model again")
        return cls(**{n: data[n] for n in names}, extra={k: v for k, v in data.items() if k not in names})
