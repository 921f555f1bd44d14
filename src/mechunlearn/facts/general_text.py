"""General English text for the "keep language modelling" loss and LM-loss side effects.

The default ships with the package (written for this project); a user may pass a text file
(paragraphs separated by blank lines)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

from mechunlearn.errors import FactDataError


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
