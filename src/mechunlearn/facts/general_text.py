"""General English text for the "keep language modelling" loss and the LM-loss side effect.

The default ships with the package (written for this project); a user may pass a text file
(paragraphs separated by blank lines) or ``hf:DATASET[:SPLIT[:COLUMN]]`` (one paragraph a row).

Every text is split into a TRAINING part and a disjoint EVALUATION part, so that the LM-loss side
effect is measured on text the general-LM training term never saw (see ``SPLIT_RULE``). Windows
are cut from each part's own token stream, so no window spans both parts."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch

from mechunlearn.errors import FactDataError, MechunlearnError

PARTS = ("train", "eval")
EVAL_EVERY = 5
SPLIT_RULE = (f"paragraph-level, fixed: exact duplicate paragraphs are dropped, then every {EVAL_EVERY}th paragraph "
              f"(the {EVAL_EVERY}th, {2 * EVAL_EVERY}th, ...; the last one when there are fewer than {EVAL_EVERY}) "
              "is evaluation text, the rest training text; windows are cut from each part separately")


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


def source_name(source: str | Path | None) -> str:
    return str(source) if source else "built-in general text"


@dataclass(frozen=True)
class TextParts:
    train: list[str]
    eval: list[str]
    n_duplicates: int  # paragraphs dropped because an identical one came earlier


def split_paragraphs(paragraphs: list[str]) -> TextParts:
    """The fixed training/evaluation split of ``SPLIT_RULE`` (independent of any seed, so that a
    training run and an evaluation with different seeds still see disjoint text)."""
    unique = list(dict.fromkeys(paragraphs))
    if len(unique) < 2:
        raise FactDataError(f"general text needs at least 2 different paragraphs (one for training, one for "
                            f"evaluation), got {len(unique)}")
    held = {i for i in range(len(unique)) if i % EVAL_EVERY == EVAL_EVERY - 1} or {len(unique) - 1}
    return TextParts(train=[p for i, p in enumerate(unique) if i not in held],
                     eval=[p for i, p in enumerate(unique) if i in held],
                     n_duplicates=len(paragraphs) - len(unique))


def token_chunks(tokenizer, paragraphs: list[str], length: int = 64, what: str = "general text") -> torch.Tensor:
    """Concatenate the paragraphs and cut them into ``[n, length]`` token windows (each row
    starts with BOS where the tokenizer has one)."""
    ids: list[int] = []
    for p in paragraphs:
        ids += tokenizer.encode(p + "\n\n", add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = length - len(bos)
    if body < 1:
        raise MechunlearnError(f"a general-text window must be longer than {len(bos)} token(s), got {length}")
    n = len(ids) // body
    if n == 0:
        raise FactDataError(f"{what} has only {len(ids)} tokens, fewer than one window of {length}")
    rows = [bos + ids[i * body:(i + 1) * body] for i in range(n)]
    return torch.tensor(rows)


def general_parts(source: str | Path | None = None) -> TextParts:
    """The training and evaluation paragraphs of a source (built-in, text file or ``hf:``)."""
    if isinstance(source, str) and source.startswith("hf:"):
        paragraphs = _hub_paragraphs(source[3:])
    else:
        paragraphs = load_general_text(source)
    try:
        return split_paragraphs(paragraphs)
    except FactDataError as e:
        raise FactDataError(f"{source_name(source)}: {e}") from None


def part_windows(tokenizer, source: str | Path | None = None, length: int = 64) -> dict[str, torch.Tensor]:
    """All windows of both parts, ``{"train": [n, length], "eval": [m, length]}``; a clear error
    naming the source when either part is shorter than one window."""
    parts = general_parts(source)
    return {part: token_chunks(tokenizer, getattr(parts, part), length,
                               f"the {part} part of {source_name(source)} ({len(getattr(parts, part))} paragraphs; "
                               f"every {EVAL_EVERY}th paragraph is held out for evaluation)")
            for part in PARTS}


def general_windows(tokenizer, source: str | Path | None = None, length: int = 64, n: int | None = None,
                    seed: int = 0, part: str = "train") -> torch.Tensor:
    """``[n, length]`` token windows of one part (``"train"`` for training, ``"eval"`` for the
    LM-loss side effect) of general English text, ``n`` of them drawn with ``seed`` (all when
    ``n`` is None): the built-in text (``None``), a text file, or ``hf:DATASET[:SPLIT[:COLUMN]]``
    (needs the ``datasets`` package and the dataset in its cache or network access)."""
    if part not in PARTS:
        raise MechunlearnError(f"unknown general-text part {part!r}: use {' or '.join(PARTS)}")
    if n is not None and n < 1:
        raise MechunlearnError(f"need at least one general-text window, got {n}")
    chunks = part_windows(tokenizer, source, length)[part]
    if n is None or n >= len(chunks):
        return chunks
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
