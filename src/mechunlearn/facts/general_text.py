"""General English text for the "keep language modelling" loss and LM-loss side effects.

The default ships with the package (written for this project); a user may pass a text file
(paragraphs separated by blank lines) or ``hf:DATASET[:SPLIT[:COLUMN]]``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

from mechunlearn.errors import FactDataError, MechunlearnError


def load_general_text(path: str | Path | None = None) -> list[str]:
    if path is None:
        text = files("mechunlearn.facts").joinpath("data/general_text.txt").read_text()
    else:
        path = Path(path)
        if not path.is_file():
            raise FactDataError(f"no such text file: {path}")
        text = path.read_text()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise FactDataError(f"general text {path or '(built-in)'} is empty")
    return paragraphs


def token_chunks(tokenizer, paragraphs: list[str], length: int = 64) -> torch.Tensor:
    """Concatenate the paragraphs and cut them into ``[n, length]`` token windows (each row
    starts with BOS where the tokenizer has one)."""
    ids: list[int] = []
    for p in paragraphs:
        ids += tokenizer.encode(p + "\n\n", add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = length - len(bos)
    n = len(ids) // body
    if n == 0:
        raise FactDataError(f"general text has only {len(ids)} tokens, fewer than one window of {length}")
    rows = [bos + ids[i * body:(i + 1) * body] for i in range(n)]
    return torch.tensor(rows)


def general_windows(tokenizer, source: str | Path | None = None, length: int = 64, n: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """``[n, length]`` token windows of general English text, ``n`` of them drawn with ``seed``
    (all when ``n`` is None): the built-in text (``None``), a text file, or
    ``hf:DATASET[:SPLIT[:COLUMN]]`` (needs the ``datasets`` package and the dataset in its cache
    or network access)."""
    if isinstance(source, str) and source.startswith("hf:"):
        paragraphs = _hub_paragraphs(source[3:])
    else:
        paragraphs = load_general_text(source)
    chunks = token_chunks(tokenizer, paragraphs, length)
    if n is None or n >= len(chunks):
        return chunks
    if n < 1:
        raise MechunlearnError(f"need at least one general-text window, got {n}")
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed))
    return chunks[order[:n].sort().values]


def _hub_paragraphs(spec: str, limit: int = 2000) -> list[str]:
    name, _, rest = spec.partition(":")
    split, _, column = rest.partition(":")
    try:
        import datasets
    except ImportError:
        raise MechunlearnError("general text from the Hub needs the 'datasets' package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        raise MechunlearnError(f"cannot load general text {name!r}: {e}") from None
    column = column or "text"
    if column not in ds.column_names:
        raise MechunlearnError(f"dataset {name!r} has no column {column!r}: {ds.column_names}")
    texts = [t for t in ds.select(range(min(limit, len(ds))))[column] if isinstance(t, str) and t.strip()]
    if not texts:
        raise MechunlearnError(f"dataset {name!r} column {column!r} holds no text")
    return texts
