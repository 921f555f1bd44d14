"""The paper's comparison: localization methods x settings x seeds, every method at the same
trained-parameter budget, each cell written atomically so that a rerun resumes where it stopped.

Run folder::

    config.json                 the fully resolved config
    data.json                   facts known, localization facts, split sizes
    localizations/{method}__s{seed}.json (+ .png, .selection.json)
    cells/{setting}__{method}__s{seed}.json   (method "unedited": the model before editing)
    results.csv, verdicts.json, report.html, report/*.png
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from mechunlearn.edit import EditConfig, train, train_sequential
from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate import EvalConfig, evaluate_run
from mechunlearn.facts import FactSet, answer_probs, filter_known, load_facts, split_facts
from mechunlearn.facts.splits import Split
from mechunlearn.io import read_json, write_json_atomic
from mechunlearn.localize import Localization, Selection, localize, select
from mechunlearn.models.loading import LoadedModel, load_model
from mechunlearn.report import write_report
from mechunlearn.report.flatten import curves, flatten

log = logging.getLogger(__name__)
BASE = "unedited"
PACKAGED = Path(__file__).parent / "configs"

DEFAULTS: dict = {
    "model": "default",
    "dtype": "float32",
    # relative ``facts.data`` / ``facts.mc_path`` paths resolve against this folder (else the
    # current one), so a packaged config can name the published files: --set data_dir=DIR
    "data_dir": None,
    "device": None,
    "seeds": [0],
    "facts": {"dataset": "sports", "data": None, "threshold": None, "mc_path": None, "limit": None},
    "localization": {
        "n_facts": 32,
        "probe_facts": 96,  # fact_lookup's probes: this many known facts, a superset of the localization facts
        "methods": ["fact_lookup", "causal_tracing", "attribution_patching", "random", "all_mlps"],
        # every method at the size of `match`'s own selection (or `params`), except the `exempt`
        # baselines that are defined by their size (all MLPs, everything); granularity null =
        # each method's own (whole layers; single matrices for random)
        "budget": {"match": "fact_lookup", "params": None, "granularity": None, "rule": "closest",
                   "exempt": ["all_mlps", "everything"]},
        "params": {},
    },
    "settings": [{"name": "edit16", "objective": "edit", "forget": 16, "mode": "random"}],
    "training": {"default": {}, "per_method": {}, "sweep": None},
    "evaluation": {"formats": ["train", "qa", "mcq"], "attacks": ["relearn", "probe"], "config": {}},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def packaged_configs() -> list[str]:
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """A YAML config merged over the defaults; a bare name (``demo``, ``quick``, ``paper``)
    names a packaged one."""
    if path is not None and str(path) in packaged_configs() and not Path(path).is_file():
        path = PACKAGED / f"{path}.yaml"
    if path is not None and not Path(path).is_file():
        raise MechunlearnError(f"no such config file: {path} (packaged configs: {', '.join(packaged_configs())})")
    user = yaml.safe_load(Path(path).read_text()) if path else {}
    if user is not None and not isinstance(user, dict):
        raise MechunlearnError(f"{path}: a config is a YAML mapping")
    config = _merge(DEFAULTS, _merge(user or {}, overrides or {}))
    names = [s.get("name") for s in config["settings"]]
    if len(set(names)) != len(names) or not all(names):
        raise MechunlearnError("every setting needs a unique name")
    if not config["seeds"]:
        raise MechunlearnError("no seeds to run")
    return config


def _edit_config(config: dict, method: str, setting: dict, seed: int) -> EditConfig:
    values = {**config["training"]["default"], **config["training"]["per_method"].get(method, {}),
              **setting.get("training", {}), "objective": setting.get("objective", "edit"), "seed": seed}
    known = {f.name for f in fields(EditConfig)}
    unknown = set(values) - known
    if unknown:
        raise MechunlearnError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
    return EditConfig(**values)


def parse_overrides(pairs: list[str]) -> dict:
    """``a.b=VALUE`` pairs (VALUE read as YAML) as a nested mapping for :func:`load_config`."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MechunlearnError(f"an override is KEY=VALUE with a dotted KEY, got {pair!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MechunlearnError(f"override {pair!r} conflicts with another one")
        node[leaf] = yaml.safe_load(value)
    return out


def only_settings(config: dict, names: list[str]) -> dict:
    known = [s["name"] for s in config["settings"]]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise MechunlearnError(f"unknown setting(s) {unknown}; the config has {known}")
    return {**config, "settings": [s for s in config["settings"] if s["name"] in names]}


def _evaluation(config: dict, setting: dict) -> dict:
    """The evaluation section with the setting's own overrides (e.g. CounterFact's formats)."""
    return _merge(config["evaluation"], setting.get("evaluation", {}))


def _eval_config(config: dict, setting: dict, seed: int) -> EvalConfig:
    return EvalConfig.from_dict({**_evaluation(config, setting).get("config", {}), "seed": seed})


class Experiment:
    def __init__(self, config: dict, out: str | Path, console: Console | None = None):
        self.config = config
        self.out = Path(out)
        self.console = console or Console(stderr=True)
        self._lm: LoadedModel | None = None
        self._pristine: dict[str, torch.Tensor] | None = None

    # --- model, reset to its original weights before every cell --------------------------
    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            c = self.config
            self._lm = load_model(c["model"], dtype=c["dtype"], device=c["device"] or _default_device())
            self._pristine = {k: v.detach().clone() for k, v in self._lm.model.state_dict().items()}
        return self._lm

    def fresh_model(self) -> LoadedModel:
        lm = self.lm
        lm.model.load_state_dict(self._pristine)
        lm.model.eval()
        for p in lm.model.parameters():
            p.requires_grad_(True)
        return lm

    # --- data ----------------------------------------------------------------------------
    def facts_spec(self, setting: dict) -> dict:
        """The setting's facts section with its file paths resolved; missing files fail here,
        before any work, not hours into a grid."""
        spec = _merge(self.config["facts"], setting.get("facts", {}))
        if spec["dataset"] == "hub":
            return spec
        for name in ("data", "mc_path"):
            if not spec.get(name):
                continue
            path = Path(self.config["data_dir"] or ".").expanduser() / spec[name]
            if not path.is_file():
                hint = "" if self.config["data_dir"] else " (relative paths resolve against data_dir: --set data_dir=DIR)"
                raise MechunlearnError(f"setting {setting['name']!r}: no such {name} file {path}{hint}")
            spec[name] = str(path)
        return spec

    def check(self) -> None:
        """Every cell's training and evaluation options and data files, before any work."""
        for setting in self.config["settings"]:
            self.facts_spec(setting)
            _eval_config(self.config, setting, 0)
            for method in self.config["localization"]["methods"]:
                _edit_config(self.config, method, setting, 0).validate()

    def facts_for(self, setting: dict) -> tuple[FactSet, dict]:
        spec = self.facts_spec(setting)
        key = f"{spec['dataset']}:{spec['data']}:{spec.get('mc_path')}:{spec['threshold']}:{spec.get('limit')}"
        cache = getattr(self, "_facts", {})
        if key not in cache:
            facts = load_facts(spec["dataset"], spec["data"], mc_path=spec.get("mc_path"))
            if spec.get("limit") and spec["limit"] < len(facts):
                facts = facts.subset(random.Random("facts").sample(list(facts.facts), spec["limit"]))
            lm = self.fresh_model()  # never an edited cell's weights
            report = filter_known(lm.model, lm.tokenizer, facts, spec["threshold"], progress=True)
            cache[key] = (report.known, {**report.to_json(), "dataset": spec["dataset"], "data": spec["data"]})
            self._facts = cache
        return cache[key]

    def localization_facts(self, known: FactSet, seed: int) -> tuple[FactSet, FactSet]:
        """The localization facts (the same for every method) and, drawn with them, the larger
        set that fact_lookup's probes are trained on."""
        lc = self.config["localization"]
        n = min(lc["n_facts"], len(known))
        n_probe = min(max(n, lc.get("probe_facts") or 0), len(known))
        drawn = random.Random(f"localization:{seed}").sample(list(known.facts), n_probe)
        return known.subset(drawn[:n], f"{known.name} localization"), known.subset(drawn, f"{known.name} probes")

    def split_for(self, known: FactSet, setting: dict, seed: int) -> list[Split]:
        """One split, or for ``blocks: K`` sequential editing K disjoint forget blocks sharing
        one maintain set."""
        mode = setting.get("mode", "random" if "category" not in setting else "category")
        if setting.get("blocks"):
            k, n = int(setting["blocks"]), int(setting.get("forget", 16))
            whole = split_facts(known, forget=k * n, mode=mode, seed=seed)
            ids = [f.id for f in whole.forget]
            return [Split(b, b, whole.maintain_train, whole.maintain_test, seed, f"sequential block {i + 1}/{k} of {n}")
                    for i, b in enumerate(whole.forget.by_id(ids[i * n:(i + 1) * n]) for i in range(k))]
        return [split_facts(known, forget=setting.get("forget"), mode=mode, category=setting.get("category"),
                            new_target=setting.get("new_target"), seed=seed)]

    # --- localization --------------------------------------------------------------------
    def localization(self, method: str, facts: FactSet, probe_facts: FactSet, seed: int, tag: str) -> Localization:
        path = self.out / "localizations" / f"{tag}{method}__s{seed}.json"
        if path.exists():
            return Localization.load(path)
        lm = self.fresh_model()
        self.console.print(f"localizing: {method} (seed {seed}, {len(facts)} facts)")
        params = dict(self.config["localization"]["params"].get(method, {}))
        if method == "fact_lookup" and len(probe_facts) > len(facts):
            params.setdefault("probe_facts", probe_facts)
        loc = localize(lm, facts, method, seed=seed, **params)
        loc.save(path)
        _try_heatmap(loc, path.with_suffix(".png"))
        return loc

    def selections(self, facts: FactSet, probe_facts: FactSet, seed: int, tag: str) -> dict[str, Selection]:
        lc = self.config["localization"]
        budget = lc["budget"]
        arch = self.lm.arch
        locs = {m: self.localization(m, facts, probe_facts, seed, tag) for m in lc["methods"]}
        match = None
        if budget.get("params") is None and budget.get("match"):
            if budget["match"] not in locs:
                raise MechunlearnError(f"budget.match {budget['match']!r} is not among the methods {lc['methods']}")
            match = select(locs[budget["match"]], arch, granularity=budget["granularity"], rule=budget["rule"])
        chosen = {}
        for method, loc in locs.items():
            own_size = method == budget.get("match") or method in budget.get("exempt", [])
            sel = select(loc, arch, budget=None if own_size else budget.get("params"), match=None if own_size else match,
                         granularity=budget["granularity"], rule=budget["rule"])
            sel.save(self.out / "localizations" / f"{tag}{method}__s{seed}.selection.json")
            chosen[method] = sel
        return chosen

    # --- cells ---------------------------------------------------------------------------
    def cell_path(self, setting: str, method: str, seed: int) -> Path:
        return self.out / "cells" / f"{setting}__{method}__s{seed}.json"

    def run_cell(self, setting: dict, method: str, seed: int, splits: list[Split], selection: Selection | None) -> dict:
        lm = self.fresh_model()
        start = time.perf_counter()
        train_info: dict = {}
        if selection is not None:
            cfg = _edit_config(self.config, method, setting, seed)
            sweep = self.config["training"].get("sweep")
            if sweep and len(splits) == 1:
                cfg, train_info["sweep"] = self.sweep(cfg, sweep, selection, splits[0])
                lm = self.fresh_model()
            if len(splits) > 1:
                results = train_sequential(lm, selection.components, splits, cfg, progress=True)
            else:
                results = [train(lm, selection.components, splits[0], cfg, progress=True)]
            train_info.update({"config": results[0].config.to_json(), "history": [r.history for r in results],
                               "seconds": sum(r.seconds for r in results)})
        evaluated = self.evaluate(lm, setting, splits, seed)
        return {
            "setting": setting["name"], "method": method, "seed": seed,
            "objective": setting.get("objective", "edit"),
            "n_params": selection.n_params if selection else 0,
            "components": selection.components if selection else [],
            "metrics": flatten(evaluated, setting.get("objective", "edit")),
            "curves": curves(evaluated),
            "train": train_info, "evaluation": evaluated,
            "seconds": time.perf_counter() - start,
        }

    def sweep(self, cfg: EditConfig, sweep: dict, selection: Selection, split: Split) -> tuple[EditConfig, dict]:
        """Try each combination of the swept values on a validation carve of the maintain-train
        facts (never the test facts) and keep the best by the stated rule: the highest forget
        score (edit: P(edit target); unlearning: 1 - P(true); training prompt) among the
        candidates whose maintain-validation P(true) drops by at most ``max_maintain_drop``
        from the unedited model; if none qualifies, the smallest maintain drop."""
        grid = {k: v for k, v in sweep.items() if k != "max_maintain_drop"}
        max_drop = float(sweep.get("max_maintain_drop", 0.05))
        bad = set(grid) - {f.name for f in fields(EditConfig)}
        if bad or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise MechunlearnError(f"training.sweep maps EditConfig fields to lists of values; got {sweep}")
        ids = [f.id for f in split.maintain_train]
        n_val = max(1, len(ids) // 5)
        val = split.maintain_train.by_id(ids[:n_val])
        trial_split = Split(split.forget, split.forget, split.maintain_train.by_id(ids[n_val:]), val, split.seed,
                            split.rule + " (sweep)")
        lm = self.fresh_model()
        before = float(answer_probs(lm.model, lm.tokenizer, val)[0].mean())
        trials = []
        for values in itertools.product(*grid.values()):
            candidate = replace(cfg, **dict(zip(grid, values, strict=True)))
            lm = self.fresh_model()
            train(lm, selection.components, trial_split, candidate, progress=False)
            p_true, p_new = answer_probs(lm.model, lm.tokenizer, split.forget)
            forget = float(p_new.mean()) if cfg.objective == "edit" else 1 - float(p_true.mean())
            maintain = float(answer_probs(lm.model, lm.tokenizer, val)[0].mean())
            trials.append({"values": dict(zip(grid, values, strict=True)), "forget_score": forget,
                           "maintain_val_p_true": maintain, "maintain_drop": before - maintain})
        ok = [t for t in trials if t["maintain_drop"] <= max_drop]
        best = max(ok, key=lambda t: t["forget_score"]) if ok else min(trials, key=lambda t: t["maintain_drop"])
        rule = (f"highest forget score with maintain-validation drop <= {max_drop}"
                if ok else "no candidate kept maintain within bound: smallest maintain drop")
        return replace(cfg, **best["values"]), {"trials": trials, "chosen": best["values"], "rule": rule,
                                                 "maintain_val_before": before, "n_val": n_val}

    def evaluate(self, lm: LoadedModel, setting: dict, splits: list[Split], seed: int) -> dict:
        ev = _evaluation(self.config, setting)
        merged = splits[0] if len(splits) == 1 else _union(splits)
        return evaluate_run(lm, merged, formats=ev["formats"], attacks=ev["attacks"],
                            config=_eval_config(self.config, setting, seed), progress=True)

    def run(self) -> Path | None:
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        _write_config(self.out / "config.json", self.config)
        data = read_json(self.out / "data.json") if (self.out / "data.json").exists() else {}
        methods = self.config["localization"]["methods"]
        skipped: dict[str, str] = {}
        for seed in self.config["seeds"]:
            for setting in self.config["settings"]:
                tag = "" if not setting.get("facts") else f"{setting['name']}__"
                try:
                    known, known_info = self.facts_for(setting)
                    loc_facts, probe_facts = self.localization_facts(known, seed)
                    splits = self.split_for(known, setting, seed)
                except FactDataError as e:  # e.g. the model knows too few facts for this setting
                    skipped[setting["name"]] = str(e)
                    self.console.print(f"[yellow]skipping setting {setting['name']!r}:[/yellow] {e}")
                    continue
                data.setdefault("known", known_info) if not tag else data.setdefault("known_" + setting["name"], known_info)
                data.setdefault("localization_facts", {})[f"{tag}s{seed}"] = [f.id for f in loc_facts]
                data.setdefault("probe_facts", {})[f"{tag}s{seed}"] = [f.id for f in probe_facts]
                data.setdefault("splits", {}).setdefault(setting["name"], {})[str(seed)] = {
                    "rule": splits[0].rule if len(splits) == 1 else f"{len(splits)} sequential blocks",
                    **{k: sum(s.sizes()[k] for s in splits) if k.startswith("forget") else splits[0].sizes()[k]
                       for k in splits[0].sizes()}}
                write_json_atomic(self.out / "data.json", data)
                todo = [m for m in [BASE, *methods] if not self.cell_path(setting["name"], m, seed).exists()]
                if not todo:
                    continue
                selections = self.selections(loc_facts, probe_facts, seed, tag) if set(todo) - {BASE} else {}
                for method in todo:
                    self.console.print(f"[b]{setting['name']}[/b] · {method} · seed {seed}")
                    cell = self.run_cell(setting, method, seed, splits, selections.get(method))
                    write_json_atomic(self.cell_path(setting["name"], method, seed), cell)
        data["skipped"] = skipped
        write_json_atomic(self.out / "data.json", data)
        report = write_report(self.out) if any((self.out / "cells").glob("*.json")) else None
        if report:
            self.console.print(summary_table(self.out))
            self.console.print(f"report: {report}")
        if skipped:
            raise MechunlearnError("settings skipped (the other cells are done and reported): "
                                   + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        return report


def _union(splits: list[Split]) -> Split:
    forget = [f for s in splits for f in s.forget]
    first = splits[0]
    return Split(first.forget.subset(forget), first.forget.subset(forget), first.maintain_train, first.maintain_test,
                 first.seed, f"{len(splits)} sequential blocks")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_config(path: Path, config: dict) -> None:
    if path.exists() and read_json(path) != config:
        raise MechunlearnError(f"{path.parent} holds a run with a different config; use another --out folder")
    write_json_atomic(path, config)


def _try_heatmap(loc: Localization, path: Path) -> None:
    try:
        from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves

        plot_heatmap(loc, path)
        if loc.method == "fact_lookup":
            plot_probe_curves(loc, path.with_name(path.stem + ".probes.png"))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose a finished localization
        log.warning("could not plot %s: %s", path.name, e)


def summary_table(run_dir: Path) -> Table:
    """Metrics as rows, methods as columns (mean over seeds), one block per setting."""
    from mechunlearn.report import results_table
    from mechunlearn.report.html import OURS, load_cells
    from mechunlearn.report.metrics import present

    cells = load_cells(run_dir)
    df = results_table(cells)
    methods = sorted(df.method.unique(), key=lambda m: (m == BASE, m != OURS, m))
    table = Table(title="mean over seeds (↑ higher is better, ↓ lower is better; labels in report.html)")
    short = {"fact_lookup": "FLU", "causal_tracing": "CT", "attribution_patching": "AP", "causal_tracing_mlps": "CT-mlp",
             "attribution_patching_mlps": "AP-mlp", "all_mlps": "all MLPs", BASE: "before"}
    table.add_column("setting / metric", no_wrap=True)
    for m in methods:
        table.add_column(short.get(m, m.replace("_", " ")), justify="right", no_wrap=True)
    for setting, group in df.groupby("setting", sort=True):
        by_method = group.groupby("method")
        table.add_row(f"[b]{setting}[/b] params",
                      *[f"{by_method.get_group(m).n_params.iloc[0] / 1e6:.1f}M" if m in by_method.groups else "–" for m in methods])
        for metric in present([c for c in cells if c["setting"] == setting]):
            values = [by_method.get_group(m)[metric.name].mean() if m in by_method.groups else float("nan") for m in methods]
            arrow = "↑" if metric.higher_is_better else "↓"
            table.add_row(f"  {metric.name} {arrow}", *["–" if v != v else f"{v:.3f}" for v in values])
    return table


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
