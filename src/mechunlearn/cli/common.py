"""Argument helpers shared by the commands, and the cheap checks every command runs before any
expensive work (output paths, input files, names, numbers)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mechunlearn.errors import MechunlearnError
from mechunlearn.io import load_json_file
from mechunlearn.models.names import DTYPES
from mechunlearn.models.sources import check_model_source, resolve_device

if TYPE_CHECKING:  # the command line imports torch only where a command needs a model
    from mechunlearn.facts import FactSet
    from mechunlearn.facts.known import KnownReport
    from mechunlearn.models.loading import LoadedModel

MODEL = typer.Option("default", "--model", help="'default' (embedded Gemma 3 270M), a Hub id, a local HF folder or a .gguf file.")
DATASET = typer.Option("sports", "--dataset", help="sports | counterfact | table | hub")
DATA = typer.Option(None, "--data", help="Path of the data file (sports: built-in athletes when omitted).")
DTYPE = typer.Option("float32", "--dtype", help="float32 | bfloat16 | auto")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
MAX_SEED = 2**32 - 1  # numpy and scikit-learn (the probes) take seeds up to this


def check_seed(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise typer.BadParameter(f"a seed is a whole number from 0 to {MAX_SEED}, got {value}")
    return value


SEED = typer.Option(0, "--seed", callback=check_seed)
THRESHOLD = typer.Option(None, "--threshold", help="Known-fact threshold (default 0.7 closed answer sets, 0.5 open).")


def pick_device(device: str | None) -> str:
    return resolve_device(device)


def open_model(model: str, dtype: str = "float32", device: str | None = None) -> LoadedModel:
    from mechunlearn.models.loading import load_model

    return load_model(model, dtype=dtype, device=pick_device(device))


def known_facts(lm: LoadedModel, dataset: str, data: str | None, seed: int = 0, threshold: float | None = None,
                progress: bool = True, facts: FactSet | None = None) -> tuple[FactSet, KnownReport]:
    from mechunlearn.facts import filter_known, load_facts

    facts = facts if facts is not None else load_facts(dataset, data, seed=seed)
    report = filter_known(lm.model, lm.tokenizer, facts, threshold=threshold, progress=progress)
    return report.known, report


# ---- cheap checks: run them all before loading a model or reading facts through it


def check_model_args(models: dict[str, str | None], dtype: str | None = None, device: str | None = None) -> None:
    """Every model path exists and is readable, the dtype is known and the device exists here."""
    if dtype is not None and dtype not in DTYPES:
        raise MechunlearnError(f"--dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    if device is not None:
        resolve_device(device)
    for option, spec in models.items():
        if spec is None:
            continue
        try:
            check_model_source(spec)
        except MechunlearnError as e:
            raise type(e)(f"{option}: {e}") from None


def check_number(option: str, value: float | None, minimum: float | None = None, above: float | None = None) -> None:
    """A finite number, at least ``minimum`` / strictly above ``above`` (``None``: not given)."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MechunlearnError(f"{option} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise MechunlearnError(f"{option} must be at least {minimum}, got {value}")
    if above is not None and value <= above:
        raise MechunlearnError(f"{option} must be greater than {above}, got {value}")


def relation_facts(facts, relation: str | None):
    """The facts of ``--relation`` (all of them without it), or one line naming the relations there are."""
    try:
        return facts.of_relation(relation)
    except MechunlearnError as e:
        raise MechunlearnError(f"--relation: {e}") from None


def check_threshold(threshold: float | None) -> None:
    check_number("--threshold", threshold, minimum=0)
    if threshold is not None and threshold >= 1:
        raise MechunlearnError(f"--threshold is a probability below 1, got {threshold}")


def _writable_parent(path: Path, option: str) -> None:
    parent = path.expanduser().absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MechunlearnError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MechunlearnError(f"{option} {path}: cannot write in {parent} (read-only); choose another place")
    try:  # what access() cannot tell: /proc, a full or read-only mount
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as e:
        raise MechunlearnError(f"{option} {path}: cannot create a folder in {parent} ({e.strerror or e}); "
                               "choose another place") from None


def check_out_file(path: Path | None, option: str = "--out") -> None:
    """An output file: not an existing folder, in a place we can write."""
    if path is None:
        return
    if path.is_dir():
        raise MechunlearnError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise MechunlearnError(f"{option} {path} is read-only; choose another file")
    _writable_parent(path, option)


def check_out_folder(path: Path, option: str = "--out", expected: tuple[str, ...] = ()) -> None:
    """An output folder: not an existing file; an existing one must be writable and, when
    ``expected`` is given, hold one of those names (it is an earlier output that gets replaced)."""
    if path.exists() and not path.is_dir():
        raise MechunlearnError(f"{option} {path} exists and is a file; give a new folder name")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise MechunlearnError(f"{option} {path} is read-only; choose another folder")
        if expected and any(path.iterdir()) and not any((path / name).exists() for name in expected):
            raise MechunlearnError(f"{option} {path} exists, is not empty and holds no {' / '.join(expected)}: "
                                   "it would be replaced; choose a new folder")
    _writable_parent(path, option)


def resolved_path(spec: str | None) -> str | None:
    """A path the user typed, made absolute when it names a file or folder here (so a log that
    records it works from any folder); anything else (a Hub id, 'default') as typed."""
    if not spec or spec == "default" or not Path(spec).expanduser().exists():
        return spec
    return str(Path(spec).expanduser().resolve())


def check_input_file(path: Path | str | None, option: str) -> None:
    if path is None:
        return
    path = Path(path).expanduser()
    if not path.exists():
        raise MechunlearnError(f"{option}: no such file: {path}")
    if not path.is_file():
        raise MechunlearnError(f"{option}: {path} is a folder, not a file")


# ---- localization and selection files


def read_localization(path: Path, option: str):
    """A localization or selection JSON written by ``mechunlearn localize``, parsed and checked
    for shape (not yet against a model)."""
    from mechunlearn.localize import Localization, Selection

    data = load_json_file(path, f"localization JSON ({option})")
    kind = data.get("format") if isinstance(data, dict) else None
    if kind not in ("mechunlearn.localization", "mechunlearn.selection"):
        what = f"format {kind!r}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise MechunlearnError(f"{option} {path} is not a localization or selection JSON ({what}); give a file "
                               "written by 'mechunlearn localize' (LOC.json or LOC.selection.json)")
    try:
        item = Selection.from_json(data) if kind == "mechunlearn.selection" else Localization.from_json(data)
    except (MechunlearnError, TypeError) as e:
        raise MechunlearnError(f"{option} {path}: {e}") from None
    names = item.components if isinstance(item, Selection) else [*item.scores, *item.chosen]
    if not all(isinstance(n, str) for n in names) or (isinstance(item, Localization) and not all(
            isinstance(v, int | float) for v in item.scores.values())):
        raise MechunlearnError(f"{option} {path}: components must be names and scores numbers; write it again "
                               "with 'mechunlearn localize'")
    item.path = path
    return item


def as_selection(item, arch, budget: int | None = None, match=None, granularity: str | None = None,
                 rule: str = "under"):
    """What a localization or selection trains in this model: a selection as it is; a
    localization cut to ``budget`` / the size of ``match``, else to its own choice, else to the
    budget recorded when it was localized (``localize --budget/--match``), else to the selection
    file written beside it. Component names are checked against ``arch``; errors name the file."""
    from mechunlearn.localize import Selection, select

    path = getattr(item, "path", None)
    try:
        if match is not None:
            match = as_selection(match, arch)
        if isinstance(item, Selection):
            if budget is not None or match is not None:
                raise MechunlearnError("a saved selection is already cut to its budget: pass the localization "
                                       "JSON to choose another budget")
            return item.check(arch)
        if budget is not None and budget > total_params(arch):
            raise MechunlearnError(f"budget {budget:,} exceeds the {total_params(arch):,} parameters of all the "
                                   "model's attention and MLP matrices; give a smaller --budget")
        if budget is None and match is None and not item.chosen:
            recorded = (item.evidence or {}).get("selection") or {}
            if recorded.get("budget"):
                return select(item, arch, budget=int(recorded["budget"]), granularity=granularity or
                              recorded.get("granularity"), rule=recorded.get("rule", rule))
            beside = Path(path).with_suffix(".selection.json") if path else None
            if beside is not None and beside.is_file():
                return as_selection(read_localization(beside, "selection"), arch)
            raise MechunlearnError(f"{item.method} ranks components but does not choose any and records no budget: "
                                   "give a budget (--budget N) or a localization to match (--match LOC.json)")
        return select(item, arch, budget, match, granularity, rule)
    except MechunlearnError as e:
        raise MechunlearnError(f"{path}: {e}" if path else str(e)) from None


def localization_misfit(item, option: str, arch, source: str, dtype: str | None = None,
                        weights: str | None = None, force: bool = False) -> str | None:
    """Refuse a localization or selection made on another model (architecture, shapes, or other
    weights at the same dtype), naming both; with ``force`` return the mismatch to warn about."""
    from mechunlearn.localize import Selection
    from mechunlearn.localize.base import model_mismatch

    recorded = item.model if isinstance(item, Selection) else (item.evidence or {}).get("model")
    problem = model_mismatch(recorded, arch, source, dtype, weights)
    if problem is None:
        return None
    message = f"{option} {getattr(item, 'path', '')}: {problem}"
    if not force:
        raise MechunlearnError(message + "; localize again on this model, or pass --force to train it anyway")
    return message


def total_params(arch) -> int:
    return sum(c.n_params for c in arch.matrices())
