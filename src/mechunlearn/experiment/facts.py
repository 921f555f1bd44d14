"""The facts of each setting: loaded, filtered to what the unedited model knows, and cut per seed
into the localization facts and the splits, so that no localization fact is ever evaluated."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.config import FactsSpec, RunConfig, SettingSpec
from mechunlearn.facts import FactSet, load_facts, sequential_blocks, split_facts
from mechunlearn.facts.splits import Split, with_examples
from mechunlearn.localize.catalog import uses_probes

LOCALIZATION_RULE = ("per seed, a seeded sample of the known facts (n_facts for every method; probe_facts, a "
                     "superset, for fact_lookup's probes; at most half of the known facts) is set aside before "
                     "the splits are drawn, so no localization fact is edited, evaluated or used by an attack; a "
                     "setting with a relation draws them from that relation's facts")


@dataclass(frozen=True)
class SeedFacts:
    localization: FactSet  # the facts every method localizes on
    probes: FactSet  # fact_lookup's probe facts (a superset of `localization`)
    splits: list[Split]  # one, or the blocks of a sequential setting


def resolve_paths(config: RunConfig, setting: SettingSpec) -> FactsSpec:
    """The setting's facts with file paths resolved against ``data_dir``; a missing file fails
    here, before any work."""
    spec = config.facts_for(setting)
    if spec.dataset == "hub":
        return spec
    resolved = {}
    for name in ("data", "mc_path"):
        value = getattr(spec, name)
        if not value:
            continue
        path = Path(config.data_dir or ".").expanduser() / value
        if not path.is_file():
            hint = "" if config.data_dir else " (relative paths resolve against data_dir: --set data_dir=DIR)"
            raise MechunlearnError(f"setting {setting.name!r}: no such {name} file {path}{hint}")
        resolved[name] = str(path)
    return FactsSpec(**{**spec.__dict__, **resolved})


def load_spec(spec: FactsSpec) -> FactSet:
    return limit_facts(load_facts(spec.dataset, spec.data, mc_path=spec.mc_path), spec.limit)


def seed_facts(config: RunConfig, known: FactSet, setting: SettingSpec, seed: int) -> SeedFacts:
    """Localization and probe facts drawn first from the known facts (of the setting's relation,
    when it names one), the splits from the rest. Each split's QA solved examples are drawn from
    the set-aside localization facts first (``facts.splits.with_examples``)."""
    loc = config.localization
    localization, probes = draw_localization(known.of_relation(setting.relation), loc.n_facts,
                                             loc.probe_facts if any(map(uses_probes, loc.methods)) else 0, seed)
    taken = {f.id for f in probes}
    rest = known.subset([f for f in known.facts if f.id not in taken], known.name)
    # one set of examples for every block of a sequential setting: the blocks share the maintain facts
    parts = splits(rest, setting, seed)
    examples = with_examples(union(parts), probes).forget.examples
    return SeedFacts(localization, probes, [s.with_examples(examples) for s in parts])


def setting_tag(setting: SettingSpec) -> str:
    """The prefix of a setting's localization files: "" when it shares the run's facts (and so the
    run's localizations), else its name (its own facts, or one relation of them)."""
    return f"{setting.name}__" if setting.facts or setting.relation is not None else ""


def draw_localization(known: FactSet, n_facts: int, probe_facts: int, seed: int) -> tuple[FactSet, FactSet]:
    """The localization facts and fact_lookup's probe facts (a superset; the same set when
    ``probe_facts`` asks for no more): one seeded draw from the known facts, at most half of them,
    so that the rest can be split. A run and ``mechunlearn localize --facts N --seed S`` both draw
    here, so the command reproduces a run's localization."""
    n = min(n_facts, len(known) // 2)
    n_probe = max(n, min(probe_facts, len(known) // 2))  # at least half the known facts stay for the splits
    drawn = random.Random(f"localization:{seed}").sample(list(known.facts), n_probe)
    return known.subset(drawn[:n], f"{known.name} localization"), known.subset(drawn, f"{known.name} probes")


def limit_facts(facts: FactSet, limit: int | None) -> FactSet:
    """A seeded sample of ``limit`` facts (all of them when ``limit`` is None or not smaller)."""
    if limit and limit < len(facts):
        return facts.subset(random.Random("facts").sample(list(facts.facts), limit))
    return facts


def splits(known: FactSet, setting: SettingSpec, seed: int) -> list[Split]:
    """One split, or for ``blocks: K`` sequential editing K disjoint forget blocks sharing one
    maintain set."""
    if setting.blocks:
        return sequential_blocks(known, setting.blocks, setting.forget or 16, seed, relation=setting.relation)
    return [split_facts(known, forget=setting.forget, mode=setting.split_mode, category=setting.category,
                        new_target=setting.new_target, seed=seed, relation=setting.relation)]


def union(splits: list[Split]) -> Split:
    """The blocks of a sequential edit as one split (every edited fact), for evaluation."""
    if len(splits) == 1:
        return splits[0]
    forget = [f for s in splits for f in s.forget]
    first = splits[0]
    return Split(first.forget.subset(forget), first.forget.subset(forget), first.maintain_train, first.maintain_test,
                 first.seed, f"{len(splits)} sequential blocks", "sequential")


def evaluated_ids(split: Split) -> set[str]:
    return {f.id for s in (split.forget, split.forget_eval, split.maintain_test) for f in s}


def split_record(splits: list[Split]) -> dict:
    sizes = splits[0].sizes()
    return {"rule": splits[0].rule if len(splits) == 1 else f"{len(splits)} sequential blocks",
            **{k: sum(s.sizes()[k] for s in splits) if k.startswith("forget") else sizes[k] for k in sizes}}
