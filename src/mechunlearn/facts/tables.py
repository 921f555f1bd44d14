"""Strict reading of fact tables (CSV, JSONL, JSON, parquet): every defect named by file, line
and column, before any fact is built."""

from __future__ import annotations

import csv
import difflib
import io
import json
from pathlib import Path

import pandas as pd

from mechunlearn.errors import FactDataError


def spaced(answer: str) -> str:
    answer = str(answer)
    return answer if answer.startswith(" ") else " " + answer


KNOWN_COLUMNS = {"id", "subject", "prompt", "target_true", "target_new", "target_false", "relation", "paraphrases",
                 "neighborhood", "question", "mc_choices", "athlete", "sport", "case_id", "prompt_id"}


def require_columns(df: pd.DataFrame, columns: list[str], path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = [str(c) for c in df.columns if c not in KNOWN_COLUMNS]  # a misspelling is not a known column
        hints = [f"{m!r} (is it {close[0]!r}?)" if (close := difflib.get_close_matches(m, found, 1, 0.6)) else repr(m)
                 for m in missing]
        raise FactDataError(f"{path}: missing column(s) {', '.join(hints)}; the header has {[str(c) for c in df.columns]}; "
                            f"name the columns {columns}")


def where(df: pd.DataFrame, i: int) -> str:
    """Where row ``i`` is in the file: its line (CSV/JSONL) or its 1-based row number."""
    lines = df.attrs.get("lines")
    return f"line {lines[i]}" if lines else f"row {i + 1}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def required_field(df: pd.DataFrame, i: int, row: dict, column: str, path) -> str:
    """A required text field of row ``i``: refused when empty or whitespace only."""
    value = row.get(column)
    if _missing(value):
        raise FactDataError(f"{path}: {where(df, i)}: empty {column!r}; fill it in or remove the row")
    return str(value)


def optional(row: dict, column: str) -> str | None:
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


def read_table(path: str | Path) -> pd.DataFrame:
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


def refuse_duplicates(df: pd.DataFrame, key: list[str], value: str, path) -> pd.DataFrame:
    """Drop exact repeats of a fact; refuse a key (subject, prompt ...) given two different answers."""
    first: dict[tuple, tuple[int, str]] = {}
    keep = []
    for i, row in enumerate(df.to_dict("records")):
        k = tuple(str(row[c]).strip() for c in key)
        answer = str(row[value]).strip()
        if k in first:
            j, seen = first[k]
            if seen != answer:
                raise FactDataError(f"{path}: {where(df, i)} gives {k[0]!r} the {value} {answer!r} but {where(df, j)} "
                                    f"gives {seen!r}; keep one")
            continue
        first[k] = (i, answer)
        keep.append(i)
    out = df.iloc[keep].reset_index(drop=True)
    if df.attrs.get("lines"):
        out.attrs["lines"] = [df.attrs["lines"][i] for i in keep]
    return out


def optional_list(row: dict, column: str):
    value = row.get(column)
    return value if isinstance(value, list | tuple) or hasattr(value, "tolist") else optional(row, column)


def unique_ids(df: pd.DataFrame, ids: list[str], path) -> None:
    first: dict[str, int] = {}
    for i, fact_id in enumerate(ids):
        if fact_id in first:
            raise FactDataError(f"{path}: {where(df, i)} repeats the id {fact_id!r} of {where(df, first[fact_id])}; "
                                "ids must be unique")
        first[fact_id] = i


def check_rows(df: pd.DataFrame, required: list[str], path) -> None:
    """Every required field filled in; the subject appears in its prompt."""
    for i, row in enumerate(df.to_dict("records")):
        for column in required:
            required_field(df, i, row, column, path)
        subject = str(row["subject"]).strip()
        if subject not in str(row["prompt"]):
            raise FactDataError(f"{path}: {where(df, i)}: the subject {subject!r} is not in its prompt "
                                f"{str(row['prompt'])[:80]!r}; the prompt must name the subject")
