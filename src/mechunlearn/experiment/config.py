"""The experiment config: a typed schema over the defaults, read strictly from YAML (and
``--set KEY.PATH=VALUE`` overrides) and checked before any work."""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from mechunlearn.edit import EditConfig
from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate import EvalConfig
from mechunlearn.experiment.schema import ConfigError, read, read_fields
from mechunlearn.localize.budget import BUDGET_TOLERANCE
from mechunlearn.localize.catalog import CATALOG, DEFAULT_METHODS, OURS, SIZED, method_defaults
from mechunlearn.models.names import DTYPES
from mechunlearn.report.analysis import AnalysisSpec
from mechunlearn.report.methods import VARIANT, split_arm

PACKAGED = Path(__file__).resolve().parents[1] / "configs"
MODES = ("random", "first", "category")
LOCALIZE_BLOCKS = ("per_block", "once")
# an arm that misses the target at lr 1e-4 (EditConfig's) is trained again at the one of these the
# validation carve chooses (edit/sweep.py): the ladder of docs/results.yaml
DEFAULT_LR_LADDER = (3.0e-4, 1.0e-3, 3.0e-3)


@dataclass(frozen=True)
class FactsSpec:
    dataset: str = "sports"
    data: str | None = None
    threshold: float | None = None
    mc_path: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class BudgetSpec:
    # every method at the size of `match`'s own selection (or `params`), except the `exempt`
    # baselines that are defined by their size; granularity None = each method's own
    match: str | None = OURS
    params: int | None = None
    granularity: str | None = None
    # within: every compared arm lands within `tolerance` of the budget, mixing matrix sizes where
    # whole layers cannot (localize/budget.py); closest: the paper's rule, may overshoot by < 1 unit
    rule: str = "within"
    # the fraction of the budget a compared arm may miss it by (0.1: +-10%); the report flags any arm
    # outside it, whatever the rule
    tolerance: float = BUDGET_TOLERANCE
    exempt: tuple[str, ...] = SIZED


@dataclass(frozen=True)
class LocalizationSpec:
    n_facts: int = 32
    probe_facts: int = 96  # fact_lookup's probes: this many facts, a superset of the localization facts
    methods: tuple[str, ...] = DEFAULT_METHODS
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    params: dict[str, dict] = field(default_factory=dict)
    # FLU variants held beside the run's own FLU: name -> fact_lookup parameters over
    # params.fact_lookup. Each adds the arm fact_lookup@name and, cut to its budget, an arm
    # method@name of every method that is not exempt from the budget
    variants: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSpec:
    formats: tuple[str, ...] = ("train", "qa", "mcq")
    attacks: tuple[str, ...] = ("relearn", "probe")
    config: dict = field(default_factory=dict)  # EvalConfig fields


@dataclass(frozen=True)
class SettingSpec:
    name: str
    objective: str = "edit"
    forget: int | None = 16
    mode: str | None = None  # random (default) | first | category (default when `category` is set)
    category: str | None = None
    new_target: str | None = None
    # the relation whose facts are edited (a table's `relation` column); the other relations' facts
    # are maintained and reported as unrelated. None: facts of any relation
    relation: str | None = None
    blocks: int | None = None  # sequential editing: this many blocks of `forget` facts
    localize: str = "per_block"  # sequential: re-localize on the model edited so far, or "once"
    facts: dict = field(default_factory=dict)  # FactsSpec fields overriding the top-level ones
    training: dict = field(default_factory=dict)  # EditConfig fields
    evaluation: dict = field(default_factory=dict)  # EvaluationSpec fields

    @property
    def split_mode(self) -> str:
        return self.mode or ("category" if self.category else "random")


@dataclass(frozen=True)
class TrainingSpec:
    default: dict = field(default_factory=dict)  # EditConfig fields
    per_method: dict[str, dict] = field(default_factory=dict)
    # every arm trains until its forget strength on the training prompts reaches this (editing:
    # mean P(edit target); unlearning: 1 - mean P(true)), with `steps` as the cap; null: fixed steps
    target: float | None = 0.9
    # an arm whose check lands above target + band is walked back along its last step into
    # [target, target + band], so every arm ends within the band; null: no walk-back
    target_band: float | None = 0.05
    # EditConfig fields -> lists of values, tried on a validation carve (see edit/sweep.py)
    sweep: dict | None = None
    # learning rates for an arm that misses the target within the cap at its configured lr: one is
    # chosen on the validation carve (edit/sweep.py's rule) and the arm is trained again at it; on by
    # default wherever there is a target and no sweep (from_dict); null: off
    lr_ladder: tuple[float, ...] | None = DEFAULT_LR_LADDER


@dataclass(frozen=True)
class RunConfig:
    model: str = "default"
    dtype: str = "float32"
    # relative facts.data / facts.mc_path resolve against this folder (else the current one)
    data_dir: str | None = None
    device: str | None = None
    # the training and relearning steps in bf16 autocast on a CPU with native bf16 (avx512_bf16 or
    # AMX); every evaluation stays fp32; an error on a CPU without it (docs/speed.md: the tolerance)
    cpu_bf16: bool = False
    seeds: tuple[int, ...] = (0,)
    facts: FactsSpec = field(default_factory=FactsSpec)
    localization: LocalizationSpec = field(default_factory=LocalizationSpec)
    settings: tuple[SettingSpec, ...] = (SettingSpec("edit16"),)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def arms(self) -> list[str]:
        """Every trained arm: the methods, then each FLU variant's arms."""
        loc = self.localization
        matched = [m for m in loc.methods if m not in loc.budget.exempt]
        return [*loc.methods, *(f"{m}{VARIANT}{v}" for v in loc.variants for m in matched)]

    def localized(self) -> list[str]:
        """The localizations of a seed: every method's, and each FLU variant's."""
        return [*self.localization.methods, *(f"{OURS}{VARIANT}{v}" for v in self.localization.variants)]

    @staticmethod
    def method_of(arm: str) -> str:
        return split_arm(arm)[0]

    def localization_params(self, arm: str) -> dict:
        method, variant = split_arm(arm)
        own = self.localization.variants[variant] if variant and method == OURS else {}
        return {**self.localization.params.get(method, {}), **own}

    def setting(self, name: str) -> SettingSpec:
        return next(s for s in self.settings if s.name == name)

    def facts_for(self, setting: SettingSpec) -> FactsSpec:
        return replace(self.facts, **setting.facts)

    def evaluation_for(self, setting: SettingSpec) -> EvaluationSpec:
        own = dict(setting.evaluation)
        config = _merge(self.evaluation.config, own.pop("config", {}))
        return replace(self.evaluation, **own, config=config)

    def eval_config(self, setting: SettingSpec, seed: int) -> EvalConfig:
        config = EvalConfig.from_dict({**self.evaluation_for(setting).config, "seed": seed})
        if self.cpu_bf16:
            config.relearn = replace(config.relearn, cpu_bf16=True)
        return config

    def edit_config(self, method: str, setting: SettingSpec, seed: int) -> EditConfig:
        values = {"target": self.training.target, "target_band": self.training.target_band,
                  "cpu_bf16": self.cpu_bf16, **self.training.default,
                  **self.training.per_method.get(split_arm(method)[0], {}), **setting.training,
                  "objective": setting.objective, "seed": seed}
        return EditConfig(**values)

    def inert(self) -> list[str]:
        """Training values that no arm reads (``EditConfig.inert``), once per setting."""
        return sorted({f"setting {s.name!r}: {line}" for s in self.settings for m in self.arms()
                       for line in self.edit_config(m, s, 0).inert()})


@dataclass(frozen=True)
class Replacing:
    """An override's value that replaces the config's value at its key, a mapping too (``--set
    localization.variants={}`` removes the variants instead of merging nothing into them)."""
    value: object


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, Replacing):
            out[k] = copy.deepcopy(v.value)
        else:
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def packaged_configs() -> list[str]:
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """A YAML config (a bare name such as ``demo``, ``quick`` or ``paper`` names a packaged one)
    with ``overrides`` merged over it, read into a checked :class:`RunConfig`."""
    if path is not None and str(path) in packaged_configs() and not Path(path).is_file():
        path = PACKAGED / f"{path}.yaml"
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"no such config file: {path} (packaged configs: {', '.join(packaged_configs())})")
    try:
        user = yaml.load(Path(path).read_text(), Loader=StrictSafeLoader) if path else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    if path and user is None:
        raise ConfigError(f"{path} is empty: a config names at least one key (an empty file would run every "
                          "default)")
    if user is not None and not isinstance(user, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping of keys to values")
    return from_dict(_merge(user or {}, overrides or {}))


class StrictSafeLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {seen[key] + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def from_dict(data: dict) -> RunConfig:
    config = read(RunConfig, data)
    training = config.training
    if "lr_ladder" not in (data.get("training") or {}) and (training.sweep is not None or training.target is None):
        # the default ladder stands down where it has no place: a sweep chooses the lr itself, and
        # without a target no arm can miss one (a ladder the config gives is checked below)
        config = replace(config, training=replace(training, lr_ladder=None))
    check(config)
    return config


def check(config: RunConfig) -> None:
    """Everything that can be checked without loading a model or data."""
    from mechunlearn.edit.config import forget_objective_names as forget_objectives  # no torch

    if not config.seeds:
        raise ConfigError("config key 'seeds' is empty: give at least one seed")
    for i, seed in enumerate(config.seeds):
        if not 0 <= seed < 2**32:
            raise ConfigError(f"config key 'seeds[{i}]' is {seed}: a seed is a whole number from 0 to {2**32 - 1}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config key 'dtype' is {config.dtype!r}: use one of {', '.join(DTYPES)}")
    names = [s.name for s in config.settings]
    if not names:
        raise ConfigError("config key 'settings' is empty: give at least one setting")
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"every setting needs a unique, non-empty name; got {names}")
    loc = config.localization
    for i, method in enumerate(loc.methods):
        if method not in CATALOG:
            raise ConfigError(f"config key 'localization.methods[{i}]' is {method!r}: use one of {', '.join(CATALOG)}")
    if not loc.methods:
        raise ConfigError("config key 'localization.methods' is empty")
    for method, params in loc.params.items():
        if method not in loc.methods:
            raise ConfigError(f"config key 'localization.params.{method}' names a method that is not run")
        _check_params(method, params, f"localization.params.{method}", list(method_defaults(method)))
    if loc.budget.match is not None and loc.budget.params is None and loc.budget.match not in loc.methods:
        raise ConfigError(f"config key 'localization.budget.match' is {loc.budget.match!r}, which is not "
                          f"among the methods {list(loc.methods)}")
    if loc.n_facts < 1 or loc.probe_facts < 0:
        raise ConfigError("localization.n_facts must be >= 1 and localization.probe_facts >= 0")
    _check_budget(loc.budget)
    for method, values in config.training.per_method.items():
        if method not in loc.methods:
            raise ConfigError(f"config key 'training.per_method.{method}' names a method that is not run")
        read_fields(EditConfig, values, f"training.per_method.{method}", partial=True)
    read_fields(EditConfig, config.training.default, "training.default", partial=True)
    read_fields(EvalConfig, config.evaluation.config, "evaluation.config", partial=True)
    band = config.training.target_band
    if band is not None and not band > 0:
        raise ConfigError(f"config key 'training.target_band' must be > 0 (the overshoot allowed above the "
                          f"target), got {band}")
    _check_facts(config.facts, "facts")
    for i, s in enumerate(config.settings):
        path = f"settings[{i}]"
        _check_facts(config.facts_for(s), f"{path}.facts" if s.facts else "facts")
        if s.objective not in forget_objectives():
            raise ConfigError(f"config key '{path}.objective' is {s.objective!r}: use one of {forget_objectives()}")
        if s.split_mode not in MODES:
            raise ConfigError(f"config key '{path}.mode' is {s.mode!r}: use one of {', '.join(MODES)}")
        if s.split_mode == "category" and not s.category:
            raise ConfigError(f"setting {s.name!r}: mode category needs a 'category' (a true answer)")
        if s.category and s.new_target and s.category.strip() == s.new_target.strip():
            raise ConfigError(f"setting {s.name!r}: new_target equals the category {s.category!r}: nothing to edit")
        if s.forget is not None and s.forget < 1:
            raise ConfigError(f"config key '{path}.forget' must be >= 1, got {s.forget}")
        if s.relation is not None and not str(s.relation).strip():
            raise ConfigError(f"config key '{path}.relation' is empty: name a relation of the facts, or leave it out")
        if s.blocks is not None and s.blocks < 1:
            raise ConfigError(f"config key '{path}.blocks' must be >= 1, got {s.blocks}")
        if s.localize not in LOCALIZE_BLOCKS:
            raise ConfigError(f"config key '{path}.localize' is {s.localize!r}: use one of {LOCALIZE_BLOCKS}")
        read_fields(FactsSpec, s.facts, f"{path}.facts", partial=True)
        read_fields(EditConfig, s.training, f"{path}.training", partial=True)
        evaluation = read_fields(EvaluationSpec, s.evaluation, f"{path}.evaluation", partial=True)
        read_fields(EvalConfig, evaluation.get("config", {}), f"{path}.evaluation.config", partial=True)
        for method in loc.methods:
            _checked(lambda m=method, st=s: config.edit_config(m, st, 0).validate(), f"{path} ({method})")
        _checked(lambda st=s: config.eval_config(st, 0), f"{path}.evaluation")
    _check_analysis(config)
    _check_variants(config)
    ladder = config.training.lr_ladder
    if ladder is not None:
        if not ladder or any(lr <= 0 for lr in ladder):
            raise ConfigError("config key 'training.lr_ladder' must be a non-empty list of positive learning rates")
        if config.training.sweep is not None or config.training.target is None:
            raise ConfigError("config key 'training.lr_ladder' needs training.target and no training.sweep (a sweep "
                              "already chooses every arm's hyperparameters on the validation carve)")
    sweep = config.training.sweep
    if sweep is not None:
        grid = {k: v for k, v in sweep.items() if k != "max_maintain_drop"}
        read_fields(EditConfig, {k: v[0] for k, v in grid.items() if isinstance(v, list) and v},
                    "training.sweep", partial=True)
        if not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError("config key 'training.sweep' maps training options to non-empty lists of values")


def _check_budget(budget: BudgetSpec) -> None:
    from mechunlearn.localize.budget import RULES, check_tolerance
    from mechunlearn.localize.scores import GRANULARITIES

    if budget.rule not in RULES:
        raise ConfigError(f"config key 'localization.budget.rule' is {budget.rule!r}: use one of {', '.join(RULES)}")
    if budget.granularity is not None and budget.granularity not in GRANULARITIES:
        raise ConfigError(f"config key 'localization.budget.granularity' is {budget.granularity!r}: use one of "
                          f"{', '.join(GRANULARITIES)}, or leave it out (each method's own)")
    if budget.params is not None and budget.params < 1:
        raise ConfigError(f"config key 'localization.budget.params' must be >= 1, got {budget.params}")
    try:
        check_tolerance(budget.tolerance, "config key 'localization.budget.tolerance'")
    except MechunlearnError as e:
        raise ConfigError(str(e)) from None


def _check_facts(spec: FactsSpec, path: str) -> None:
    from mechunlearn.facts.loaders import DATASETS

    if spec.dataset not in DATASETS:
        raise ConfigError(f"config key '{path}.dataset' is {spec.dataset!r}: use one of {', '.join(DATASETS)}")
    if spec.threshold is not None and not 0 <= spec.threshold < 1:
        raise ConfigError(f"config key '{path}.threshold' is {spec.threshold}: a probability in [0, 1)")
    if spec.limit is not None and spec.limit < 1:
        raise ConfigError(f"config key '{path}.limit' is {spec.limit}: give at least 1 fact, or leave it out")


def _check_variants(config: RunConfig) -> None:
    loc = config.localization
    if not loc.variants:
        return
    if OURS not in loc.methods or loc.budget.match != OURS or loc.budget.params is not None:
        raise ConfigError(f"config key 'localization.variants' needs {OURS} among the methods and "
                          f"localization.budget.match: {OURS} (each variant's arms are cut to its budget)")
    known = [k for k in method_defaults(OURS) if k != "probe_facts"]
    for name, params in loc.variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise ConfigError(f"config key 'localization.variants.{name}': a variant's name is letters, digits, _ or -")
        _check_params(OURS, params, f"localization.variants.{name}", known)


def _check_params(method: str, params: dict, path: str, known: list[str]) -> None:
    for key in params:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; {method} takes {', '.join(known) or 'none'}"
            raise ConfigError(f"config key '{path}.{key}' is not a parameter of {method}{hint}")


def _check_analysis(config: RunConfig) -> None:
    from mechunlearn.evaluate.headline import METRICS

    a = config.analysis
    for i, metric in enumerate(a.primary or ()):
        if metric not in METRICS:
            raise ConfigError(f"config key 'analysis.primary[{i}]' is {metric!r}: use one of {', '.join(METRICS)}")
    if a.primary is not None and not a.primary:
        raise ConfigError("config key 'analysis.primary' is empty: name at least one metric, or leave it out")
    for i, method in enumerate(a.against or ()):
        if method == OURS or method not in config.localization.methods:
            raise ConfigError(f"config key 'analysis.against[{i}]' is {method!r}: use methods of the run other than "
                              f"{OURS} ({', '.join(m for m in config.localization.methods if m != OURS)})")
    if a.against is not None and not a.against:
        raise ConfigError("config key 'analysis.against' is empty: name at least one method, or leave it out")
    for metric, value in {"": a.delta, **a.delta_per_metric}.items():
        key = f"analysis.delta_per_metric.{metric}" if metric else "analysis.delta"
        if metric and metric not in METRICS:
            raise ConfigError(f"config key {key!r} names an unknown metric; use one of {', '.join(METRICS)}")
        if not value > 0:
            raise ConfigError(f"config key {key!r} must be > 0 (the smallest difference that matters), got {value}")
    for key, value in (("alpha", a.alpha), ("power", a.power)):
        if not 0 < value < 1:
            raise ConfigError(f"config key 'analysis.{key}' must lie between 0 and 1, got {value}")


def _checked(make, where: str):
    try:
        return make()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the config classes' own checks, named by where they came from
        raise ConfigError(f"config {where}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """``a.b=VALUE`` pairs (VALUE read as YAML) as a nested mapping for :func:`load_config`; each
    VALUE replaces the config's value at its key (set one key of a mapping with a longer path)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override is KEY=VALUE with a dotted KEY, got {pair!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another one")
        try:
            node[leaf] = Replacing(yaml.safe_load(value))
        except yaml.YAMLError:
            raise ConfigError(f"override {pair!r}: the value is not valid YAML") from None
    return out


def only_settings(config: RunConfig, names: list[str]) -> RunConfig:
    known = [s.name for s in config.settings]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; the config has {known}")
    return replace(config, settings=tuple(s for s in config.settings if s.name in names))
