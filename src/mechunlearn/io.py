"""Atomic writes: a crash never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, Path | set | tuple):
        return str(o) if isinstance(o, Path) else list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMPORARY_SUFFIX = ".tmp"
_PARTIAL = re.compile(r"\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX) + "$")  # name.<mkstemp's 8 characters>.tmp


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, default=_default, allow_nan=True))


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed :func:`write_text_atomic` left in ``folder`` and its
    subfolders (they never became results); returns what was deleted."""
    left = [p for p in Path(folder).rglob("*" + TEMPORARY_SUFFIX) if p.is_file() and _PARTIAL.search(p.name)]
    for p in left:
        p.unlink(missing_ok=True)
    return left


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_json_file(path: str | Path, what: str = "JSON file"):
    """``read_json`` for a user-given file: a missing, unreadable, non-UTF-8 or malformed file is
    a one-line ``MechunlearnError`` naming the file (and the line of a syntax error)."""
    from mechunlearn.errors import MechunlearnError

    path = Path(path)
    if not path.exists():
        raise MechunlearnError(f"no such {what}: {path}")
    if not path.is_file():
        raise MechunlearnError(f"{path} is not a file (expected a {what})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MechunlearnError(f"{path}: not UTF-8 text (byte {e.start}); is it really a {what}?") from None
    if not text.strip():
        raise MechunlearnError(f"{path} is empty (expected a {what})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MechunlearnError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                               f"the file may be truncated: write it again") from None
