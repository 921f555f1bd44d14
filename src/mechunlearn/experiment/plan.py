"""The work of a run from its config alone (no model, no data): every cell, every localization,
and per setting the training config of each arm and the evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.edit import EditConfig
from mechunlearn.evaluate.config import EvalConfig
from mechunlearn.experiment import facts as run_facts
from mechunlearn.experiment.config import RunConfig
from mechunlearn.report.methods import BASE


@dataclass(frozen=True)
class SettingWork:
    forget: int
    blocks: int
    training: dict[str, EditConfig]  # arm -> its training config
    formats: tuple[str, ...]
    attacks: tuple[str, ...]
    eval_config: EvalConfig


@dataclass(frozen=True)
class RunPlan:
    cells: list[tuple[str, str, int]]  # (setting, method, seed)
    localizations: list[tuple]  # (method, seed, setting tag) and one per re-localized block
    settings: dict[str, SettingWork]


def plan(config: RunConfig) -> RunPlan:
    methods = [BASE, *config.arms()]
    seed0 = config.seeds[0]
    settings = {s.name: SettingWork(forget=s.forget or 16, blocks=s.blocks or 1,
                                    training={m: config.edit_config(m, s, seed0) for m in config.arms()},
                                    formats=config.evaluation_for(s).formats, attacks=config.evaluation_for(s).attacks,
                                    eval_config=config.eval_config(s, seed0)) for s in config.settings}
    localizations = {(m, seed, run_facts.setting_tag(s)[:-2]) for seed in config.seeds for s in config.settings
                     for m in config.localized()}
    relocalized = [(m, seed, s.name) for seed in config.seeds for s in config.settings if s.blocks and
                   s.localize == "per_block" for m in config.localized() for _ in range(s.blocks - 1)]
    return RunPlan(cells=[(s.name, m, seed) for seed in config.seeds for s in config.settings for m in methods],
                   localizations=sorted(localizations) + relocalized, settings=settings)
