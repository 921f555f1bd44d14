"""The files an edit writes (``edit/saving.py``), named without importing torch: the command
line checks its output folder and the diff it reads before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from mechunlearn.errors import MechunlearnError

DIFF_FILE = "diff.safetensors"
LOG_FILE = "train_log.json"
MODEL_DIR = "model"


def diff_file(path: str | Path) -> Path:
    """An edit's diff: ``path`` itself, or the diff in the folder ``path``; refused when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / DIFF_FILE
    if not path.is_file():
        raise MechunlearnError(f"no such diff file: {path}")
    return path
