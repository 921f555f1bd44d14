"""Argument helpers shared by the commands."""

from __future__ import annotations

import torch
import typer

from mechunlearn.facts import FactSet, filter_known, load_facts
from mechunlearn.facts.known import KnownReport
from mechunlearn.models.loading import LoadedModel, load_model

MODEL = typer.Option("default", "--model", help="'default' (embedded Gemma 3 270M), a Hub id, a local HF folder or a .gguf file.")
DATASET = typer.Option("sports", "--dataset", help="sports | counterfact | table | hub")
DATA = typer.Option(None, "--data", help="Path of the data file (sports: built-in athletes when omitted).")
DTYPE = typer.Option("float32", "--dtype", help="float32 | bfloat16 | auto")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
SEED = typer.Option(0, "--seed")
THRESHOLD = typer.Option(None, "--threshold", help="Known-fact threshold (default 0.7 closed answer sets, 0.5 open).")


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def open_model(model: str, dtype: str = "float32", device: str | None = None) -> LoadedModel:
    return load_model(model, dtype=dtype, device=pick_device(device))


def known_facts(lm: LoadedModel, dataset: str, data: str | None, seed: int = 0, threshold: float | None = None,
                progress: bool = True) -> tuple[FactSet, KnownReport]:
    facts = load_facts(dataset, data, seed=seed)
    report = filter_known(lm.model, lm.tokenizer, facts, threshold=threshold, progress=progress)
    return report.known, report
