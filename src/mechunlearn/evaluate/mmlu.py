"""MMLU-style multiple choice from a local file in the ``cais/mmlu`` layout, and an optional
bridge to lm-evaluation-harness for the full benchmark on real models.

The file (CSV, JSONL or parquet) has one question per row: ``question`` (text), ``subject``
(e.g. ``high_school_biology``), ``choices`` (a list of option texts; a JSON or Python list in
CSV) and ``answer`` (the 0-based index of the correct option, or its letter). Shots for each
question are other questions of the same file, of the same subject where enough exist, chosen
with a seed per question. Scoring: the option letters after ``Answer:``, normalised over the
letters shown."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate.formats import LETTERS, FormatItem
from mechunlearn.evaluate.metrics import score_items
from mechunlearn.facts.loaders import parse_string_list
from mechunlearn.models.loading import LoadedModel


@dataclass(frozen=True)
class MCQuestion:
    question: str
    subject: str
    choices: tuple[str, ...]
    answer: int


def _answer_index(value, n_choices: int, where: str) -> int:
    text = str(value).strip()
    index = LETTERS.index(text.upper()) if len(text) == 1 and text.upper() in LETTERS else None
    if index is None:
        try:
            index = int(float(text))
        except ValueError:
            raise FactDataError(f"{where}: answer {value!r} is neither an option index nor a letter") from None
    if not 0 <= index < n_choices:
        raise FactDataError(f"{where}: answer {value!r} is out of range for {n_choices} choices")
    return index


def _read_frame(source: str | Path) -> pd.DataFrame:
    path = Path(source)
    if path.is_file():
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
        return pd.read_csv(path, keep_default_na=False)
    text = str(source)
    if path.suffix or text.count("/") != 1:
        raise FactDataError(f"no such MMLU file: {source}")
    try:
        import datasets
    except ImportError:
        raise FactDataError("loading MMLU from the Hub needs the 'datasets' package (or pass a local file)") from None
    try:
        return datasets.load_dataset(text, "all", split="test").to_pandas()
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds
        raise FactDataError(f"cannot load {text!r} from the Hub (offline? pass a local file): {e}") from None


def load_mmlu(source: str | Path) -> list[MCQuestion]:
    """Questions from a local ``cais/mmlu``-layout file (or a Hub id such as ``cais/mmlu`` when online)."""
    df = _read_frame(source)
    missing = [c for c in ("question", "subject", "choices", "answer") if c not in df.columns]
    if missing:
        raise FactDataError(f"{source}: missing column(s) {missing}; the cais/mmlu layout is question, subject, choices, answer")
    questions = []
    for i, row in enumerate(df.to_dict("records")):
        choices = parse_string_list(row["choices"])
        where = f"{source} row {i}"
        if not 2 <= len(choices) <= len(LETTERS):
            raise FactDataError(f"{where}: {len(choices)} choices; need 2 to {len(LETTERS)}")
        questions.append(MCQuestion(str(row["question"]), str(row["subject"]), choices,
                                    _answer_index(row["answer"], len(choices), where)))
    if not questions:
        raise FactDataError(f"{source} has no questions")
    return questions


def _block(q: MCQuestion) -> str:
    return "\n".join([q.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]) + "\nAnswer:"


def mmlu_prompt(question: MCQuestion, shots: list[MCQuestion]) -> str:
    header = f"The following are multiple choice questions (with answers) about {question.subject.replace('_', ' ')}.\n\n"
    solved = "".join(f"{_block(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return header + solved + _block(question)


def choose_shots(questions: list[MCQuestion], index: int, k: int, seed: int) -> list[MCQuestion]:
    """``k`` other questions for question ``index``: the same subject first, then any."""
    rng = random.Random(f"{seed}:{index}")
    same = [j for j, q in enumerate(questions) if j != index and q.subject == questions[index].subject]
    other = [j for j, q in enumerate(questions) if j != index and q.subject != questions[index].subject]
    rng.shuffle(same)
    rng.shuffle(other)
    return [questions[j] for j in (same + other)[:k]]


def mmlu_eval(lm: LoadedModel, source: str | Path, shots: int = 1, limit: int | None = None, seed: int = 0,
              batch_size: int = 8, progress: bool = False) -> dict:
    """Accuracy (argmax letter) and mean P(correct letter) on an MMLU-layout file."""
    questions = load_mmlu(source)
    if shots < 0:
        raise MechunlearnError(f"shots must be >= 0, got {shots}")
    if shots >= len(questions):
        raise MechunlearnError(f"{shots}-shot needs more than {shots} questions; {source} has {len(questions)}")
    chosen = list(range(len(questions)))
    if limit is not None and limit < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    items = []
    for i in chosen:
        q = questions[i]
        letters = tuple(f" {LETTERS[j]}" for j in range(len(q.choices)))
        items.append(FormatItem(str(i), (mmlu_prompt(q, choose_shots(questions, i, shots, seed)),),
                                letters[q.answer], None, letters))
    scores = [s[0] for s in score_items(lm, items, batch_size, progress, desc="MMLU")]
    by_subject: dict[str, list[bool]] = {}
    for i, s in zip(chosen, scores, strict=True):
        by_subject.setdefault(questions[i].subject, []).append(s.correct)
    return {
        "accuracy": sum(s.correct for s in scores) / len(scores),
        "p_correct": sum(s.p_true for s in scores) / len(scores),
        "chance": sum(1 / len(questions[i].choices) for i in chosen) / len(chosen),
        "n": len(scores),
        "shots": shots,
        "source": str(source),
        "by_subject": {k: sum(v) / len(v) for k, v in sorted(by_subject.items())},
    }


def lm_eval_bridge(lm: LoadedModel, tasks: tuple[str, ...] = ("mmlu",), num_fewshot: int = 5,
                   limit: int | float | None = None, batch_size: int = 8) -> dict:
    """Run lm-evaluation-harness tasks (full MMLU by default) on the model in memory. Needs the
    optional ``lm-eval`` package and, for datasets not cached, network access."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise MechunlearnError(
            "the lm-evaluation-harness bridge needs the optional package 'lm-eval' (pip install lm-eval); "
            "use a local MMLU file (--mmlu PATH) otherwise"
        ) from None
    model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit)
    return {"tasks": list(tasks), "num_fewshot": num_fewshot, "limit": limit, "results": out["results"]}
