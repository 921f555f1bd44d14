"""The paper's comparison: localization methods x settings x seeds, every method at the same
trained-parameter budget and trained to the same strength, each cell written atomically so that a
rerun resumes where it stopped.

Run folder::

    config.json                 the fully resolved config
    data.json                   facts known, localization facts, split sizes, templates
    localizations/{method}__s{seed}.json (+ .png, .selection.json)
    cells/{setting}__{method}__s{seed}.json   (method "unedited": the model before editing)
    results.csv, verdicts.json, report.html, report/*.png
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from mechunlearn.edit import EditConfig, TrainResult
from mechunlearn.edit.pipeline import train_split
from mechunlearn.edit.saving import weights_hash
from mechunlearn.edit.sweep import LADDER_RULE, first_attempt, sweep
from mechunlearn.errors import FactDataError, MechunlearnError, TrainingDivergedError
from mechunlearn.evaluate import evaluate_run
from mechunlearn.evaluate.attacks import get_attack
from mechunlearn.evaluate.formats import (
    EXAMPLE_PLACEHOLDER,
    format_templates,
    qa_examples_record,
    skipped_line,
    unaskable,
)
from mechunlearn.evaluate.headline import curves, for_objective
from mechunlearn.evaluate.result import EvaluationResult
from mechunlearn.experiment import claims
from mechunlearn.experiment import facts as run_facts
from mechunlearn.experiment.cell import Cell, code_fingerprint
from mechunlearn.experiment.config import RunConfig, SettingSpec, from_dict, only_settings
from mechunlearn.experiment.estimate import run_guard
from mechunlearn.experiment.localizations import Localizations
from mechunlearn.experiment.schema import ConfigError
from mechunlearn.experiment.summary import summary_table
from mechunlearn.facts import FactSet, filter_known
from mechunlearn.facts.splits import EXAMPLE_RULE, Split
from mechunlearn.io import read_json, remove_partial_writes, write_json_atomic
from mechunlearn.localize import Selection
from mechunlearn.models.loading import LoadedModel, load_model
from mechunlearn.models.precision import check_cpu_bf16
from mechunlearn.profiling import stage
from mechunlearn.report import write_report
from mechunlearn.report.methods import BASE


class Experiment:
    def __init__(self, config: RunConfig, out: str | Path, console: Console | None = None,
                 only: Sequence[str] | None = None):
        """``only``: the names of the settings whose cells this process computes (the folder keeps
        the whole config)."""
        self.config = config
        self.work = only_settings(config, list(only)) if only else config
        self.out = Path(out)
        self.console = console or Console(stderr=True)
        self.locs = Localizations(config, self.out / "localizations", self.console)
        self._lm: LoadedModel | None = None
        self._pristine: dict[str, torch.Tensor] | None = None
        self.base_hash = ""  # of the original weights, which every cell starts from
        self._known: dict[tuple, tuple[FactSet, dict]] = {}
        self.memory = None  # the memory guard, set when a run starts
        self.computed: list[str] = []  # the cells this process computed
        self.stop_on_failure = False  # a failed cell stops the run (else it is named and the run goes on)
        self.skipped_formats: dict[str, dict[str, str]] = {}  # setting -> format -> what no fact has (check())

    # --- model, reset to its original weights before every cell --------------------------
    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            c = self.config
            device = c.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._lm = load_model(c.model, dtype=c.dtype, device=device)
            self._pristine = {k: v.detach().clone() for k, v in self._lm.model.state_dict().items()}
            self.base_hash = self.locs.weights = weights_hash(self._lm.model)
        return self._lm

    def fresh_model(self) -> LoadedModel:
        lm = self.lm
        with stage("model reset"):
            lm.model.load_state_dict(self._pristine)
        lm.model.eval()
        for p in lm.model.parameters():
            p.requires_grad_(True)
        return lm

    # --- data ----------------------------------------------------------------------------
    def known_facts(self, setting: SettingSpec) -> tuple[FactSet, dict]:
        spec = run_facts.resolve_paths(self.config, setting)
        key = (spec.dataset, spec.data, spec.mc_path, spec.threshold, spec.limit)
        if key not in self._known:
            facts = run_facts.load_spec(spec)
            # the scoring is kept in the run folder (the folder's config fixes the model), so an
            # interrupted run does not score again, and processes sharing the folder score it once
            saved = self.out / "known" / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.json"
            with claims.wait_for(saved.with_suffix(".claim")):
                if saved.is_file():
                    record = read_json(saved)
                    ids = set(record["known_ids"])
                    self._known[key] = (facts.subset([f for f in facts if f.id in ids], f"{facts.name} (known)"),
                                        record["info"])
                    return self._known[key]
                lm = self.fresh_model()  # never an edited cell's weights
                report = filter_known(lm.model, lm.tokenizer, facts, spec.threshold, progress=True)
                self._known[key] = (report.known, {**report.to_json(), "dataset": spec.dataset, "data": spec.data})
                write_json_atomic(saved, {"key": list(key), "known_ids": [f.id for f in report.known],
                                          "info": self._known[key][1]})
        return self._known[key]

    def check(self) -> None:
        """Data files and what the settings need of them, right after the facts load and before
        any model work (the config itself was checked when it was read)."""
        for setting in self.work.settings:
            facts = run_facts.load_spec(run_facts.resolve_paths(self.config, setting))
            where = f"setting {setting.name!r}"
            if setting.category and setting.category.strip() not in facts.count_by_answer():
                answers = ", ".join(list(facts.count_by_answer())[:10])
                raise ConfigError(f"{where}: category {setting.category!r} is no fact's answer; the answers are "
                                  f"{answers}")
            skipped = unaskable(facts, self.config.evaluation_for(setting).formats)
            if skipped:
                self.skipped_formats[setting.name] = skipped
                self.console.print(f"[yellow]{escape(skipped_line(where, skipped))}[/yellow]", soft_wrap=True)
            if setting.relation is not None:
                try:
                    facts = facts.of_relation(setting.relation)
                except FactDataError as e:
                    raise ConfigError(f"{where}: {e}") from None
            needed = (setting.forget or 0) * (setting.blocks or 1)
            if setting.split_mode != "category" and needed >= len(facts):
                of = f"the relation {setting.relation!r}" if setting.relation is not None else "the data"
                raise ConfigError(f"{where}: forget {setting.forget}{f' x {setting.blocks} blocks' if setting.blocks else ''}"
                                  f" needs more than the {len(facts)} facts of {of}; forget fewer")

    # --- cells ---------------------------------------------------------------------------
    def cell_path(self, setting: str, method: str, seed: int) -> Path:
        return self.out / "cells" / f"{setting}__{method}__s{seed}.json"

    def cell_done(self, path: Path) -> bool:
        """A finished cell; an unreadable one (a crash or a full disk) is set aside, named, and
        computed again."""
        if not path.exists():
            return False
        try:
            Cell.read(path)
            return True
        except MechunlearnError as e:
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            self.console.print(f"[yellow]{e}: moved to {aside.name}, computing it again[/yellow]")
            return False

    def run_cell(self, setting: SettingSpec, method: str, seed: int, facts: run_facts.SeedFacts,
                 selection: Selection | None, first: dict[str, Selection]) -> Cell:
        start = time.perf_counter()
        train_info: dict = {}
        components = selection.components if selection else []
        if selection is None:
            lm = self.fresh_model()
        else:
            cfg = self.config.edit_config(method, setting, seed)
            # sequential settings choose on one block-sized carve of the maintain-train facts
            # that every block shares; the chosen values train every block
            if self.config.training.sweep:
                cfg, train_info["sweep"] = self.sweep_on_carve(cfg, self.config.training.sweep, selection, facts.splits[0])
            if self.memory is not None:
                self.memory.before_cell(cfg, selection.n_params, self.lm.device)
            lm, results, selections = self.train_blocks(cfg, setting, method, seed, facts, selection, first)
            ladder = self.config.training.lr_ladder
            if ladder:
                train_info["lr_rule"] = LADDER_RULE.format(ladder=", ".join(f"{lr:g}" for lr in ladder))
                if not all(r.target["reached"] for r in results):
                    train_info["first_attempt"] = first_attempt(results)
                    with stage("lr ladder", absorb=True):
                        cfg, train_info["sweep"] = self.sweep_on_carve(cfg, {"lr": list(ladder)}, selection,
                                                                       facts.splits[0])
                    lm, results, selections = self.train_blocks(cfg, setting, method, seed, facts, selection, first)
            components = sorted({c for s in selections for c in s.components})
            train_info.update({"config": results[0].config.to_json(), "history": [r.history for r in results],
                               "seconds": sum(r.seconds for r in results)})
            if cfg.target is not None:
                train_info["target"] = [r.target for r in results]
            if len(facts.splits) > 1:
                train_info["blocks"] = [{"components": s.components, "n_params": s.n_params, "note": s.note}
                                        for s in selections]
                train_info["localize"] = setting.localize
        evaluated = self.evaluate(lm, setting, facts.splits, seed, edited=selection is not None)
        return Cell(
            setting=setting.name, method=method, seed=seed, objective=setting.objective,
            n_params=selection.n_params if selection else 0,
            budget=self.locs.budget_record(method, selection),  # the report flags an arm outside its tolerance
            components=components,
            metrics=for_objective(evaluated.aggregates, setting.objective),
            curves=curves(evaluated.attacks),
            train=train_info, evaluation=evaluated.to_json(),
            seconds=time.perf_counter() - start, code=code_fingerprint(),
        )

    def twin(self, setting: SettingSpec, method: str, seed: int, facts: run_facts.SeedFacts,
             selections: dict[str, Selection]) -> Cell | None:
        """A finished cell of this setting and seed, computed by this code, whose arm trains the same
        components in the same order with the same training config (e.g. two FLU rules that choose
        the same MLPs, and the arms cut to their equal budgets): this arm would compute the same
        numbers. None for the unedited model and for sequential blocks, which localize again per
        block."""
        mine = selections.get(method)
        if mine is None or len(facts.splits) > 1:
            return None
        config = self.config.edit_config(method, setting, seed)
        for other, selection in selections.items():
            path = self.cell_path(setting.name, other, seed)
            if (other != method and selection.components == mine.components
                    and self.config.edit_config(other, setting, seed) == config and self.cell_done(path)):
                cell = Cell.read(path)
                if cell.code == code_fingerprint():
                    return cell
        return None

    def copied_cell(self, twin: Cell, method: str, selection: Selection) -> Cell:
        return replace(twin, method=method, budget=self.locs.budget_record(method, selection), seconds=0.0,
                       train={**twin.train, "same_as": twin.train.get("same_as", twin.method)})

    def sweep_on_carve(self, cfg: EditConfig, grid: dict, selection: Selection, split: Split) -> tuple[EditConfig, dict]:
        return sweep(cfg, grid, split, self.fresh_model,
                     lambda m, carve, c: train_split(m, selection.components, carve, c, progress=False,
                                                     base_hash=self.base_hash))

    def train_blocks(self, cfg: EditConfig, setting: SettingSpec, method: str, seed: int, facts: run_facts.SeedFacts,
                     selection: Selection, first: dict[str, Selection]
                     ) -> tuple[LoadedModel, list[TrainResult], list[Selection]]:
        """The arm trained from the original weights, block after block (one block unless sequential)."""
        lm = self.fresh_model()
        results, selections = [], [selection]
        for i, block in enumerate(facts.splits):
            if i > 0 and setting.localize == "per_block":
                selections.append(self.locs.reselect(lm, method, facts, seed, first))
            results.append(train_split(lm, selections[-1].components, block, cfg, base_hash=self.base_hash))
        return lm, results, selections

    def evaluate(self, lm: LoadedModel, setting: SettingSpec, splits: list[Split], seed: int,
                 edited: bool) -> EvaluationResult:
        ev = self.config.evaluation_for(setting)
        attacks = ev.attacks if edited else [a for a in ev.attacks if get_attack(a).attacks_unedited]
        formats = [f for f in ev.formats if f not in self.skipped_formats.get(setting.name, {})]
        return evaluate_run(lm, run_facts.union(splits), formats=formats, attacks=attacks,
                            config=self.config.eval_config(setting, seed), progress=True)

    def record_formats(self, data: dict, setting: SettingSpec, known: FactSet) -> None:
        config = self.config.eval_config(setting, 0)
        formats = self.config.evaluation_for(setting).formats
        # the solved example of a QA prompt varies by relation and seed: data.json's qa_examples has each
        data.setdefault("templates", {})[setting.name] = format_templates(known, formats, config.style,
                                                                          example=EXAMPLE_PLACEHOLDER)
        data.setdefault("formats", {})[setting.name] = {"qa_template": config.qa_template,
                                                        "mcq_format": config.mcq_format}
        used = {f["mcq_format"] for name, f in data["formats"].items()
                if "mcq" in self.config.evaluation_for(self.config.setting(name)).formats}
        data["mcq_format"] = ", ".join(sorted(used)) if used else "no MCQ format evaluated"

    # --- the grid ------------------------------------------------------------------------
    def run_cells(self, setting: SettingSpec, seed: int, facts: run_facts.SeedFacts, tag: str, todo: list[str],
                  failed: dict[str, str]) -> None:
        """The cells of ``todo``, each claimed just before it is computed, so that processes sharing
        the run folder split a seed's cells; a cell another live process holds is left to it."""
        selections = None
        for method in todo:
            path = self.cell_path(setting.name, method, seed)
            held = claims.claim(path.with_suffix(".claim"))
            if held is None:
                self.console.print(f"{path.stem}: computed by another process "
                                   f"({claims.describe(path.with_suffix('.claim'))})")
                continue
            with held:
                if self.cell_done(path):  # finished by another process since the list was made
                    continue
                if selections is None and method != BASE:  # one process localizes; the others wait for its files
                    with claims.wait_for(self.out / "localizations" / f"{tag}s{seed}.claim"):
                        selections = self.locs.selections(self.fresh_model, facts, seed, tag)
                twin = self.twin(setting, method, seed, facts, selections or {})
                if twin is not None:  # the same training of the same components: the same numbers
                    write_json_atomic(path, self.copied_cell(twin, method, selections[method]).to_json())
                    self.console.print(f"[b]{setting.name}[/b] · {method} · seed {seed}: trains what "
                                       f"{twin.method} trained; its cell is copied")
                    self.computed.append(path.stem)
                    continue
                self.console.print(f"[b]{setting.name}[/b] · {method} · seed {seed}")
                try:
                    cell = self.run_cell(setting, method, seed, facts, (selections or {}).get(method),
                                         selections or {})
                except TrainingDivergedError as e:
                    failed[path.stem] = str(e)
                    write_json_atomic(self.out / "failed" / path.name, {"cell": path.stem, "error": str(e)})
                    self.console.print(f"[red]cell {path.stem} failed:[/red] {escape(str(e))}")
                    if self.stop_on_failure:
                        raise MechunlearnError(f"cell {path.stem} failed: {e}; stopped (the cells before it are "
                                               "kept)") from None
                    continue
                (self.out / "failed" / path.name).unlink(missing_ok=True)
                write_json_atomic(path, cell.to_json())
                self.computed.append(path.stem)

    def grid_pass(self, data: dict, skipped: dict[str, str], failed: dict[str, str]) -> None:
        """One pass over the grid: every unfinished cell that no live process holds is computed."""
        for seed in self.config.seeds:
            for setting in self.work.settings:
                tag = run_facts.setting_tag(setting)
                try:
                    with stage("known-facts filter", absorb=True):
                        known, known_info = self.known_facts(setting)
                    facts = run_facts.seed_facts(self.config, known, setting, seed)
                except FactDataError as e:  # e.g. the model knows too few facts for this setting
                    skipped[setting.name] = str(e)
                    self.console.print(f"[yellow]skipping setting {setting.name!r}:[/yellow] {e}")
                    continue
                data.setdefault("known" if not tag else "known_" + setting.name, known_info)
                data.setdefault("localization_facts", {})[f"{tag}s{seed}"] = [f.id for f in facts.localization]
                data.setdefault("probe_facts", {})[f"{tag}s{seed}"] = [f.id for f in facts.probes]
                data.setdefault("splits", {}).setdefault(setting.name, {})[str(seed)] = run_facts.split_record(
                    facts.splits)
                self.record_formats(data, setting, known)
                if {"qa", "mcq"} & set(self.config.evaluation_for(setting).formats):
                    whole = run_facts.union(facts.splits)  # the solved example each evaluated relation's prompts show
                    evaluated = whole.forget_eval.subset([*whole.forget_eval, *whole.maintain_test])
                    data["qa_example_rule"] = EXAMPLE_RULE
                    data.setdefault("qa_examples", {}).setdefault(setting.name, {})[str(seed)] = qa_examples_record(
                        evaluated, {f.id for f in facts.probes})
                if setting.name in self.skipped_formats:
                    data.setdefault("skipped_formats", {})[setting.name] = self.skipped_formats[setting.name]
                write_json_atomic(self.out / "data.json", data)
                methods = [BASE, *self.config.arms()]
                todo = [m for m in methods if not self.cell_done(self.cell_path(setting.name, m, seed))]
                self.run_cells(setting, seed, facts, tag, todo, failed)

    def orphaned(self) -> list[Path]:
        """Unfinished cells whose claim outlived its owner."""
        return [p for p in (self.out / "cells").glob("*.claim")
                if claims.stale(p) and not p.with_suffix(".json").exists()]

    def run(self, report: bool = True) -> Path | None:
        """The grid, resumed where the folder stands; ``report=False``: only the cells (a worker
        of several sharing the folder, whose driver writes the report)."""
        self.check()
        code_fingerprint()  # cached: the cells name the code this process started with, not later edits
        self.memory = run_guard(self.work)
        self.memory.before_load()  # refuse a run that would not fit before anything is loaded or written
        _ = self.lm  # a model that does not load fails before the run folder is written
        if self.config.cpu_bf16:
            check_cpu_bf16(self.lm.device)
        self.out.mkdir(parents=True, exist_ok=True)
        with claims.presence(self.out / "running") as alone:
            if alone:  # what a run killed while writing left behind; never another live process's files
                remove_partial_writes(self.out)
            return self._run(report)

    def _run(self, report: bool) -> Path | None:
        added = _write_config(self.out / "config.json", self.config.to_json())
        if added and self.config.analysis.against is None:
            self.console.print(f"[yellow]methods added to this run folder ({', '.join(added)}) join its default "
                               "primary family, so Holm corrects over more comparisons than before; to keep the "
                               "family declared before, set analysis.against[/yellow]")
        data = read_json(self.out / "data.json") if (self.out / "data.json").exists() else {}
        data["localization_rule"] = run_facts.LOCALIZATION_RULE
        skipped: dict[str, str] = {}
        failed: dict[str, str] = {}  # cells whose training diverged: named, set aside, tried again on a rerun
        self.grid_pass(data, skipped, failed)
        for _ in range(3):  # a process sharing the folder died holding cells this one had passed: take them over
            if not self.orphaned():
                break
            self.grid_pass(data, skipped, failed)
        data["skipped"] = skipped
        write_json_atomic(self.out / "data.json", data)
        busy = [p for p in (self.out / "cells").glob("*.claim") if not claims.stale(p)]
        if not report:
            written = None
        elif busy:  # other processes share this folder: the last of them writes the report
            self.console.print(f"{len(busy)} cell(s) are being computed by other processes "
                               f"({'; '.join(f'{p.stem}: {claims.describe(p)}' for p in busy[:3])}); the last "
                               "process to finish writes the report")
            return None
        else:
            with stage("report", absorb=True):
                written = write_report(self.out) if any((self.out / "cells").glob("*.json")) else None
            if written:
                self.console.print(summary_table(self.out))
                self.console.print(f"report: {written}")
        if skipped or failed:
            raise MechunlearnError("settings skipped or cells failed (the other cells are done and reported): "
                                   + "; ".join(f"{k}: {v}" for k, v in {**skipped, **failed}.items()))
        return written


# what may change in a run folder's config once work is in it: added seeds and FLU variants
# compute only their own cells, and the analysis reads the cells without changing them; settings
# and localization methods may be added too (``_write_config`` compares the ones both configs
# name: no arm's cells depend on which other arms run), but not changed
OPEN_KEYS = ("seeds", "analysis", "localization.variants")


def _fixed(config: dict) -> dict:
    """The config without ``OPEN_KEYS``, every key a later version added filled with its default."""
    out = from_dict(config).to_json()
    for key in OPEN_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    out["settings"] = {s["name"]: s for s in out["settings"]}
    return out


def _changed_keys(stored, new, path: str = "") -> list[str]:
    """The key paths where two configs differ."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return [k for key in sorted(set(stored) | set(new), key=str)
                for k in _changed_keys(stored.get(key), new.get(key), f"{path}.{key}" if path else str(key))]
    return [] if stored == new else [path or "the config"]


def _drop_added_methods(stored: dict, new: dict) -> list[str]:
    """``new`` without the localization methods ``stored`` does not run, and their parameters;
    returns those methods."""
    kept = set(stored["localization"]["methods"])
    added = [m for m in new["localization"]["methods"] if m not in kept]
    new["localization"]["methods"] = [m for m in new["localization"]["methods"] if m in kept]
    for section, key in (("localization", "params"), ("training", "per_method")):
        new[section][key] = {m: v for m, v in new[section][key].items() if m in kept}
    return added


def _write_config(path: Path, config: dict) -> list[str]:
    """A run folder keeps its config, but for ``OPEN_KEYS``, once work is in it; before that a
    corrected config may replace a failed start's. Returns the localization methods added to a
    folder that holds work."""
    added: list[str] = []
    if path.exists():
        try:
            stored, new = _fixed(read_json(path)), _fixed(config)
            new["settings"] = {k: v for k, v in new["settings"].items() if k in stored["settings"]}  # added: new cells
            added = _drop_added_methods(stored, new)
            changed = _changed_keys(stored, new)
        except (ValueError, MechunlearnError, AttributeError, TypeError):
            changed = ["(its config.json cannot be read)"]
        work = [p for d in ("cells", "localizations") for p in (path.parent / d).glob("*.json")]
        if changed and work:
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise MechunlearnError(f"{path.parent} holds a run with a different config ({', '.join(changed[:5])}{more} "
                                   f"differ; only {', '.join(OPEN_KEYS)} may change, and settings and "
                                   "localization methods be added); "
                                   "use another --out folder")
        added = added if work else []
    write_json_atomic(path, json.loads(json.dumps(config)))
    return added
