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
import csv
import difflib
import io
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

SPORTS = ("football", "baseball", "basketball")
SPORTS_ANSWERS = tuple(f" {s}" for s in (*SPORTS, "golf"))
SPORTS_PROMPT = "Fact: Tiger Woods plays the sport of golf\nFact: {subject} plays the sport of"
SPORTS_QUESTION = "What sport does {subject} play?"
SPORTS_SYSTEM = (
    "You are a helpful chatbot that answers questions about athletes. "
    "Please be concise and answer with a single word."
)


def _space(answer: str) -> str:
    answer = str(answer)
    return answer if answer.startswith(" ") else " " + answer


KNOWN_COLUMNS = {"id", "subject", "prompt", "target_true", "target_new", "target_false", "relation", "paraphrases",
                 "neighborhood", "question", "mc_choices", "athlete", "sport", "case_id", "prompt_id"}


def _require(df: pd.DataFrame, columns: list[str], path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = [str(c) for c in df.columns if c not in KNOWN_COLUMNS]  # a misspelling is not a known column
        hints = [f"{m!r} (is it {close[0]!r}?)" if (close := difflib.get_close_matches(m, found, 1, 0.6)) else repr(m)
                 for m in missing]
        raise FactDataError(f"{path}: missing column(s) {', '.join(hints)}; the header has {[str(c) for c in df.columns]}; "
                            f"name the columns {columns}")


def _where(df: pd.DataFrame, i: int) -> str:
    """Where row ``i`` is in the file: its line (CSV/JSONL) or its 1-based row number."""
    lines = df.attrs.get("lines")
    return f"line {lines[i]}" if lines else f"row {i + 1}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _field(df: pd.DataFrame, i: int, row: dict, column: str, path) -> str:
    """A required text field of row ``i``: refused when empty or whitespace only."""
    value = row.get(column)
    if _missing(value):
        raise FactDataError(f"{path}: {_where(df, i)}: empty {column!r}; fill it in or remove the row")
    return str(value)


def _optional(row: dict, column: str) -> str | None:
    value = row.get(column)
    return None if _missing(value) else str(value)


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise FactDataError(f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def _read_csv(path: Path) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise FactDataError(f"{path} is empty: expected a header line and one fact per row")
        header = [h or f"Unnamed: {i}" for i, h in enumerate(header)]  # a saved pandas index, as pandas names it
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise FactDataError(f"{path}: the header repeats column(s) {repeated}")
        rows, lines = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise FactDataError(f"{path}: line {reader.line_num}: {len(row)} fields but the header has "
                                    f"{len(header)}; quote fields that contain commas")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise FactDataError(f"{path}: line {reader.line_num}: not readable as CSV ({e})") from None
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df.attrs["lines"] = lines
    return df


def _read_jsonl(path: Path) -> pd.DataFrame:
    records, lines = [], []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FactDataError(f"{path}: line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                                "fix or remove the line") from None
        if not isinstance(record, dict):
            raise FactDataError(f"{path}: line {n}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
        lines.append(n)
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    df.attrs["lines"] = lines
    return df


def _read_json(path: Path) -> pd.DataFrame:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise FactDataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return pd.DataFrame.from_records(data) if data else pd.DataFrame()
    if isinstance(data, dict) and all(isinstance(v, list | dict) for v in data.values()):
        try:
            return pd.DataFrame(data)
        except ValueError as e:
            raise FactDataError(f"{path}: columns of unequal length ({e})") from None
    raise FactDataError(f"{path}: expected a list of fact objects (or one list per column)")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FactDataError(f"{path}: not a readable parquet file ({first})") from None


def _read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, JSONL, JSON or parquet table, strictly: every row has the header's fields, every
    line parses; the error names the file and line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FactDataError(f"no such data file: {path}")
    if not path.is_file():
        raise FactDataError(f"{path} is a folder, not a data file")
    if path.stat().st_size == 0:
        raise FactDataError(f"{path} is empty: expected one fact per row")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    df = readers.get(path.suffix.lower(), _read_csv)(path)
    if len(df) == 0:
        raise FactDataError(f"{path} has no rows (only a header?): expected one fact per row")
    return df


def _refuse_duplicates(df: pd.DataFrame, key: list[str], value: str, path) -> pd.DataFrame:
    """Drop exact repeats of a fact; refuse a key (subject, prompt ...) given two different answers."""
    first: dict[tuple, tuple[int, str]] = {}
    keep = []
    for i, row in enumerate(df.to_dict("records")):
        k = tuple(str(row[c]).strip() for c in key)
        answer = str(row[value]).strip()
        if k in first:
            j, seen = first[k]
            if seen != answer:
                raise FactDataError(f"{path}: {_where(df, i)} gives {k[0]!r} the {value} {answer!r} but {_where(df, j)} "
                                    f"gives {seen!r}; keep one")
            continue
        first[k] = (i, answer)
        keep.append(i)
    out = df.iloc[keep].reset_index(drop=True)
    if df.attrs.get("lines"):
        out.attrs["lines"] = [df.attrs["lines"][i] for i in keep]
    return out


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
                target_true=_space(sport),
                target_new=_space(target),
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
    df = _read_table(path)
    _require(df, ["athlete", "sport"], path)
    records = df.to_dict("records")
    for i, row in enumerate(records):
        for column in ("athlete", "sport"):
            _field(df, i, row, column, path)
        if str(row["sport"]).strip() not in SPORTS:
            raise FactDataError(f"{path}: {_where(df, i)}: athlete {row['athlete']!r} has sport {row['sport']!r}, "
                                f"expected one of {SPORTS}")
    df = _refuse_duplicates(df, ["athlete"], "sport", path)
    rows = []
    for row in df.to_dict("records"):
        athlete, sport = str(row["athlete"]).strip(), str(row["sport"]).strip()
        target = (_optional(row, "inject_sport_without_golf") or "").strip()
        rows.append((athlete, sport, target or _other_sport(athlete, sport, seed)))
    return _athletes(rows, "sports", str(path))


_PY_STRING = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""", re.S)


def parse_string_list(value) -> tuple[str, ...]:
    """Parse a list of strings stored as JSON, a Python list, or a printed numpy array
    (``"['a' 'b'\\n 'c']"``, no commas)."""
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
    try:
        return tuple(str(v) for v in json.loads(text))
    except json.JSONDecodeError:
        return tuple(ast.literal_eval(m.group(0)) for m in _PY_STRING.finditer(text))


def load_counterfact(path: str | Path, mc_path: str | Path | None = None) -> FactSet:
    """CounterFact CSV; multiple-choice questions joined on ``prompt_id`` when ``mc_path`` is given
    (default: ``counterfact_mc_questions.parquet`` beside the CSV, if present)."""
    df = _read_table(path)
    _require(df, ["prompt", "subject", "target_true", "target_false"], path)
    _check_rows(df, ["subject", "prompt", "target_true", "target_false"], path)
    mc_path = Path(mc_path) if mc_path else Path(path).with_name("counterfact_mc_questions.parquet")
    mc: dict[str, tuple[str, tuple[str, ...]]] = {}
    notes = []
    if mc_path.is_file():
        mcq = _read_table(mc_path)
        _require(mcq, ["question", "target_true", "targets_false", "prompt_id"], mc_path)
        for row in mcq.itertuples():
            mc[str(row.prompt_id)] = (row.question, (str(row.target_true).strip(), *parse_string_list(row.targets_false)))
    ids = df["case_id"].astype(str) if "case_id" in df else pd.Series(range(len(df))).astype(str)
    _unique_ids(df, list(ids), path)
    prompt_ids = df["prompt_id"].astype(str) if "prompt_id" in df else ids
    facts, inserted, mismatched = [], 0, []
    for i, row in enumerate(df.to_dict("records")):
        target_new = _space(row["target_false"])
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
                target_true=_space(row["target_true"]),
                target_new=target_new,
                relation=str(row.get("relation_id", row.get("relation", ""))),
                paraphrases=parse_string_list(row.get("paraphrase_prompts")),
                neighborhood=parse_string_list(row.get("neighborhood_prompts")),
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


def _optional_list(row: dict, column: str):
    value = row.get(column)
    return value if isinstance(value, list | tuple) or hasattr(value, "tolist") else _optional(row, column)


def _unique_ids(df: pd.DataFrame, ids: list[str], path) -> None:
    first: dict[str, int] = {}
    for i, fact_id in enumerate(ids):
        if fact_id in first:
            raise FactDataError(f"{path}: {_where(df, i)} repeats the id {fact_id!r} of {_where(df, first[fact_id])}; "
                                "ids must be unique")
        first[fact_id] = i


def _check_rows(df: pd.DataFrame, required: list[str], path) -> None:
    """Every required field filled in; the subject appears in its prompt."""
    for i, row in enumerate(df.to_dict("records")):
        for column in required:
            _field(df, i, row, column, path)
        subject = str(row["subject"]).strip()
        if subject not in str(row["prompt"]):
            raise FactDataError(f"{path}: {_where(df, i)}: the subject {subject!r} is not in its prompt "
                                f"{str(row['prompt'])[:80]!r}; the prompt must name the subject")


def load_table(path: str | Path, name: str | None = None, answers: list[str] | None = None) -> FactSet:
    """A generic CSV/JSONL fact table (columns documented in this module)."""
    df = _read_table(path)
    _require(df, ["subject", "prompt", "target_true"], path)
    _check_rows(df, ["subject", "prompt", "target_true"], path)
    df = _refuse_duplicates(df, ["subject", "prompt"], "target_true", path)
    records = df.to_dict("records")
    ids = [_optional(row, "id") or str(i) for i, row in enumerate(records)]
    _unique_ids(df, ids, path)
    facts = []
    for fact_id, row in zip(ids, records, strict=True):
        target_new = _optional(row, "target_new")
        facts.append(
            Fact(
                id=fact_id,
                subject=str(row["subject"]).strip(),
                prompt=str(row["prompt"]),
                target_true=_space(row["target_true"]),
                target_new=_space(target_new) if target_new else None,
                relation=_optional(row, "relation") or "",
                paraphrases=parse_string_list(_optional_list(row, "paraphrases")),
                neighborhood=parse_string_list(_optional_list(row, "neighborhood")),
                question=_optional(row, "question"),
                mc_choices=parse_string_list(_optional_list(row, "mc_choices")),
            )
        )
    closed = tuple(_space(a) for a in answers) if answers else None
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
