"""Fact loaders: built-in athletes, Sports Facts CSV, CounterFact CSV (+ MC parquet), generic
CSV/JSONL tables, and Hugging Face Hub datasets when online.

Generic tables (CSV or JSONL) have one fact per row:

=============  ========  =======================================================
column         required  meaning
=============  ========  =======================================================
subject        yes       the entity, as it appears in the prompt
prompt         yes       the training prompt, ending right before the answer
target_true    yes       the true answer (a leading space is added if missing)
target_new     no        the edit target
id             no        a unique id (default: row number)
relation       no        relation name or id
paraphrases    no        list of prompts (JSON list in CSV)
neighborhood   no        prompts of other subjects with the same true answer
question       no        a natural question for the QA format
mc_choices     no        multiple-choice options, true answer first
=============  ========  =======================================================
"""

from __future__ import annotations

import ast
import json
import random
import re
import tempfile
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import pandas as pd

from mechunlearn.errors import FactDataError
from mechunlearn.facts.records import Fact, FactSet
from mechunlearn.facts.tables import (
    check_rows,
    optional,
    optional_list,
    read_table,
    refuse_duplicates,
    require_columns,
    required_field,
    spaced,
    unique_ids,
    where,
)

SPORTS = ("football", "baseball", "basketball")
SPORTS_ANSWERS = tuple(f" {s}" for s in (*SPORTS, "golf"))
SPORTS_PROMPT = "Fact: Tiger Woods plays the sport of golf\nFact: {subject} plays the sport of"
SPORTS_QUESTION = "What sport does {subject} play?"
SPORTS_SYSTEM = (
    "You are a helpful chatbot that answers questions about athletes. "
    "Please be concise and answer with a single word."
)


def _other_sport(athlete: str, sport: str, seed: int) -> str:
    return random.Random(f"{seed}:{athlete}").choice([s for s in SPORTS if s != sport])


def _athletes(rows: list[tuple[str, str, str]], name: str, source: str) -> FactSet:
    facts = []
    for athlete, sport, target in rows:
        if sport not in SPORTS:
            raise FactDataError(f"{source}: athlete {athlete!r} has sport {sport!r}, expected one of {SPORTS}")
        facts.append(
            Fact(
                id=athlete,
                subject=athlete,
                prompt=SPORTS_PROMPT.format(subject=athlete),
                target_true=spaced(sport),
                target_new=spaced(target),
                relation="plays the sport of",
                question=SPORTS_QUESTION.format(subject=athlete),
                mc_choices=(sport, *[s for s in (*SPORTS, "golf") if s != sport]),
            )
        )
    return FactSet(name, tuple(facts), SPORTS_ANSWERS, (" golf",), SPORTS_SYSTEM, source)


def load_builtin_athletes(seed: int = 0) -> FactSet:
    """Our own list of well-known athletes; edit targets are a seeded other sport."""
    path = files("mechunlearn.facts").joinpath("data/athletes.csv")
    df = pd.read_csv(str(path), keep_default_na=False)
    rows = [(a, s, _other_sport(a, s, seed)) for a, s in zip(df.athlete, df.sport, strict=True)]
    return _athletes(rows, "athletes (built-in)", "mechunlearn built-in athletes.csv")


def load_sports(path: str | Path, seed: int = 0) -> FactSet:
    """Sports Facts CSV (``athlete``, ``sport``; edit target from ``inject_sport_without_golf``
    when present, else a seeded other sport)."""
    df = read_table(path)
    require_columns(df, ["athlete", "sport"], path)
    records = df.to_dict("records")
    for i, row in enumerate(records):
        for column in ("athlete", "sport"):
            required_field(df, i, row, column, path)
        if str(row["sport"]).strip() not in SPORTS:
            raise FactDataError(f"{path}: {where(df, i)}: athlete {row['athlete']!r} has sport {row['sport']!r}, "
                                f"expected one of {SPORTS}")
    df = refuse_duplicates(df, ["athlete"], "sport", path)
    rows = []
    for row in df.to_dict("records"):
        athlete, sport = str(row["athlete"]).strip(), str(row["sport"]).strip()
        target = (optional(row, "inject_sport_without_golf") or "").strip()
        rows.append((athlete, sport, target or _other_sport(athlete, sport, seed)))
    return _athletes(rows, "sports", str(path))


_PY_STRING = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.S)


def parse_string_list(value, where: str = "a list cell") -> tuple[str, ...]:
    """Parse a list of strings stored as JSON, a Python list, or a printed numpy array
    (``"['a' 'b'\\n 'c']"``, no commas); ``where`` names the cell in errors."""
    if value is None or (isinstance(value, float) and value != value):
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    if hasattr(value, "tolist"):
        return tuple(str(v) for v in value.tolist())
    text = str(value).strip()
    if not text:
        return ()
    if not text.startswith("["):
        return (text,)
    if not text.endswith("]"):
        raise FactDataError(f"{where}: the list {_clip(text)} never closes (no ']'); fix the cell")
    try:
        return tuple(str(v) for v in json.loads(text))
    except json.JSONDecodeError:
        pass
    try:
        return tuple(ast.literal_eval(m.group(0)) for m in _PY_STRING.finditer(text))
    except (SyntaxError, ValueError) as e:
        raise FactDataError(f"{where}: the list {_clip(text)} holds a string Python cannot read "
                            f"({getattr(e, 'msg', e)}); fix the cell") from None


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def load_counterfact(path: str | Path, mc_path: str | Path | None = None) -> FactSet:
    """CounterFact CSV; multiple-choice questions joined on ``prompt_id`` when ``mc_path`` is given
    (default: ``counterfact_mc_questions.parquet`` beside the CSV, if present)."""
    df = read_table(path)
    require_columns(df, ["prompt", "subject", "target_true", "target_false"], path)
    check_rows(df, ["subject", "prompt", "target_true", "target_false"], path)
    mc_path = Path(mc_path) if mc_path else Path(path).with_name("counterfact_mc_questions.parquet")
    mc: dict[str, tuple[str, tuple[str, ...]]] = {}
    notes = []
    if mc_path.is_file():
        mcq = read_table(mc_path)
        require_columns(mcq, ["question", "target_true", "targets_false", "prompt_id"], mc_path)
        for row in mcq.itertuples():
            choices = parse_string_list(row.targets_false, f"{mc_path}: row {row.Index + 1}: 'targets_false'")
            mc[str(row.prompt_id)] = (row.question, (str(row.target_true).strip(), *choices))
    ids = df["case_id"].astype(str) if "case_id" in df else pd.Series(range(len(df))).astype(str)
    unique_ids(df, list(ids), path)
    prompt_ids = df["prompt_id"].astype(str) if "prompt_id" in df else ids
    facts, inserted, mismatched = [], 0, []
    for i, row in enumerate(df.to_dict("records")):
        target_new = spaced(row["target_false"])
        question, choices = mc.get(prompt_ids.iloc[i], (None, ()))
        if choices and choices[0] != str(row["target_true"]).strip():
            mismatched.append(ids.iloc[i])  # the question asks about another answer than the fact
            question, choices = None, ()
        if choices and target_new.strip() not in choices:
            choices = (*choices[:-1], target_new.strip())  # make the edit target representable
            inserted += 1
        facts.append(
            Fact(
                id=ids.iloc[i],
                subject=str(row["subject"]).strip(),
                prompt=str(row["prompt"]),
                target_true=spaced(row["target_true"]),
                target_new=target_new,
                relation=str(row.get("relation_id", row.get("relation", ""))),
                paraphrases=parse_string_list(row.get("paraphrase_prompts"),
                                              f"{path}: {where(df, i)}: 'paraphrase_prompts'"),
                neighborhood=parse_string_list(row.get("neighborhood_prompts"),
                                               f"{path}: {where(df, i)}: 'neighborhood_prompts'"),
                question=question,
                mc_choices=choices,
            )
        )
    with_mc = sum(1 for f in facts if f.mc_choices)
    notes.append(f"{with_mc} of {len(facts)} facts have a multiple-choice question")
    if mismatched:
        notes.append(f"{len(mismatched)} MC questions left out: their true answer is not the fact's "
                     f"(facts {', '.join(mismatched[:5])})")
    if inserted:
        notes.append(f"{inserted} MC questions had the edit target put in place of their last distractor")
    notes.append("open-vocabulary answers are scored by their first token")
    return FactSet("counterfact", tuple(facts), None, (), "", str(path), tuple(notes))


def load_table(path: str | Path, name: str | None = None, answers: list[str] | None = None) -> FactSet:
    """A generic CSV/JSONL fact table (columns documented in this module)."""
    df = read_table(path)
    require_columns(df, ["subject", "prompt", "target_true"], path)
    check_rows(df, ["subject", "prompt", "target_true"], path)
    df = refuse_duplicates(df, ["subject", "prompt"], "target_true", path)
    records = df.to_dict("records")
    ids = [optional(row, "id") or str(i) for i, row in enumerate(records)]
    unique_ids(df, ids, path)
    facts = []
    for i, (fact_id, row) in enumerate(zip(ids, records, strict=True)):
        target_new = optional(row, "target_new")
        cell = f"{path}: {where(df, i)}"
        facts.append(
            Fact(
                id=fact_id,
                subject=str(row["subject"]).strip(),
                prompt=str(row["prompt"]),
                target_true=spaced(row["target_true"]),
                target_new=spaced(target_new) if target_new else None,
                relation=optional(row, "relation") or "",
                paraphrases=parse_string_list(optional_list(row, "paraphrases"), f"{cell}: 'paraphrases'"),
                neighborhood=parse_string_list(optional_list(row, "neighborhood"), f"{cell}: 'neighborhood'"),
                question=optional(row, "question"),
                mc_choices=parse_string_list(optional_list(row, "mc_choices"), f"{cell}: 'mc_choices'"),
            )
        )
    closed = tuple(spaced(a) for a in answers) if answers else None
    return FactSet(name or Path(path).stem, tuple(facts), closed, source=str(path))


def load_hub(dataset_id: str, split: str = "train", **kwargs) -> FactSet:
    """A Hub dataset with the generic table's columns (needs network and the ``datasets`` package)."""
    try:
        import datasets
    except ImportError:
        raise FactDataError("loading Hub datasets needs the 'datasets' package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        raise FactDataError(f"cannot load Hub dataset {dataset_id!r}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="mechunlearn-hub-") as folder:
        table = Path(folder) / "facts.jsonl"
        ds.to_json(str(table))
        return replace(load_table(table, name=dataset_id, **kwargs), source=f"hf:{dataset_id}:{split}")


DATASETS = ("sports", "counterfact", "table", "hub")


def load_facts(dataset: str = "sports", data: str | None = None, seed: int = 0, **kwargs) -> FactSet:
    """``sports`` (the built-in athletes without ``data``), ``counterfact``, ``table`` or ``hub``."""
    if dataset == "sports":
        return load_sports(data, seed) if data else load_builtin_athletes(seed)
    if dataset == "counterfact":
        if not data:
            raise FactDataError("--dataset counterfact needs --data PATH to the CounterFact CSV")
        return load_counterfact(data, kwargs.get("mc_path"))
    if dataset == "table":
        if not data:
            raise FactDataError("--dataset table needs --data PATH to a CSV/JSONL file")
        return load_table(data, answers=kwargs.get("answers"))
    if dataset == "hub":
        if not data:
            raise FactDataError("--dataset hub needs --data OWNER/NAME")
        return load_hub(data)
    raise FactDataError(f"unknown dataset {dataset!r}: use one of {DATASETS}")
