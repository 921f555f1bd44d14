"""Prompt formats: the same fact asked in different ways.

Each fact becomes a :class:`FormatItem`: one or more prompts, the continuation that counts as
the true answer, the one that counts as the edit target, the candidate continuations a
closed-set probability is normalised over (``None``: the full vocabulary), and how a
continuation is scored (its first token at the prompt's last position, or its whole text).

* ``train``: the fact's training prompt.
* ``qa``: a question/answer template chosen by name (:data:`QA_TEMPLATES`): ``paper`` (default,
  the paper's system sentence and one solved example) or ``concise`` (the fact set's own
  system line, no example). Scored on the answer's first token. The athletes' solved example is
  the paper's (Tiger Woods: golf, which no athlete of the data plays); any other relation's is a
  fact of the asked fact's own relation that is never evaluated (``FactSet.examples``, chosen by
  ``facts.splits.with_examples``), or none when there is no such fact.
* ``mcq``: multiple choice in a variant chosen by name (:data:`MCQ_FORMATS`, see
  docs/mcq_formats.md). Options are shuffled by a seed per fact (``random.Random(f"{seed}:{fact.id}")``).
  Letter variants show k authored solved examples (never an evaluated fact), then the question
  with lettered options, and score the letters ``" A"``, ``" B"``, ... normalised over the
  letters shown. Likelihood variants score each option's full text as the continuation,
  normalised over the options (summed, or per-token mean log-probability). Every variant gives
  P(true option) and P(edit-target option).
* ``paraphrase``: the fact's paraphrase prompts (averaged per fact).
* ``neighborhood``: prompts about other subjects with the same true answer (averaged per
  fact); their "new" answer is still the fact's edit target, which they must not move to.

Facts that a format cannot ask (no question, no options, no paraphrases, no neighbours) are
returned as missing, with their ids, never dropped silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mechunlearn.errors import FactDataError
from mechunlearn.facts import Fact, FactSet

FORMATS = ("train", "qa", "mcq", "paraphrase", "neighborhood")
LETTERS = "ABCDEFGHIJ"
SCORINGS = ("first_token", "sum", "mean")  # first answer token; whole continuation: summed / mean log p

QA_TEMPLATES = ("paper", "concise")
DEFAULT_QA_TEMPLATE = "paper"
MCQ_FORMATS = ("paper", "letter-0shot", "letter-1shot", "letter-3shot", "letter-8shot",
               "option-likelihood", "option-likelihood-norm", "options-shown")
DEFAULT_MCQ_FORMAT = "option-likelihood"  # highest P(true) on known facts (docs/mcq_formats.md)

PAPER_SYSTEM_SPORTS = ("You are a helpful chatbot that answers questions about athletes. "
                       "Please be maximally helpful and factually correct.")
PAPER_EXAMPLE_SPORTS = "Question: What sport does Tiger Woods play? Answer: golf\n"
# Our adaptation of the paper's template to other relations (the paper gives only the athletes one).
PAPER_SYSTEM_GENERAL = "You are a helpful chatbot that answers questions. Please be maximally helpful and factually correct."
# what the QA template records in place of the example when the facts asked have several relations
EXAMPLE_PLACEHOLDER = "Question: {example question} Answer: {example answer}\n"
# what each format needs of a fact, named when no fact of a table has it
NEEDS = {"qa": "a question ('question' column)", "mcq": "a question and answer options ('question' and "
         "'mc_choices' columns)", "paraphrase": "paraphrase prompts ('paraphrases' column)",
         "neighborhood": "neighbourhood prompts ('neighborhood' column)"}


@dataclass(frozen=True)
class SolvedExample:
    subject: str  # refused as an example when a fact of the evaluated set has this subject
    question: str
    options: tuple[str, ...]
    answer: int


# Authored, not drawn from any data set. Athletes play sports outside the relation's answers
# (or golf, which is only an edit target), so none can be an evaluated fact; answers cycle B A C D.
SPORTS_EXAMPLES = tuple(SolvedExample(s, f"What sport does {s} play?", o, a) for s, o, a in (
    ("Tiger Woods", ("football", "golf", "basketball", "baseball"), 1),
    ("Serena Williams", ("tennis", "baseball", "football", "basketball"), 0),
    ("Wayne Gretzky", ("basketball", "football", "hockey", "baseball"), 2),
    ("Michael Phelps", ("baseball", "basketball", "football", "swimming"), 3),
    ("Roger Federer", ("football", "tennis", "baseball", "basketball"), 1),
    ("Simone Biles", ("gymnastics", "basketball", "baseball", "football"), 0),
    ("Sidney Crosby", ("baseball", "football", "hockey", "basketball"), 2),
    ("Jack Nicklaus", ("basketball", "baseball", "football", "golf"), 3),
    ("Muhammad Ali", ("boxing", "football", "basketball", "baseball"), 0),
    ("Mike Tyson", ("football", "boxing", "baseball", "basketball"), 1),
))
GENERAL_EXAMPLES = tuple(SolvedExample(*e) for e in (
    ("France", "What is the capital city of France?", ("Berlin", "Paris", "Madrid", "Rome"), 1),
    ("the Red Planet", "Which planet is known as the Red Planet?", ("Mars", "Venus", "Jupiter", "Saturn"), 0),
    ("gold", "What is the chemical symbol for gold?", ("Ag", "Fe", "Au", "Pb"), 2),
    ("a week", "How many days are in a week?", ("five", "six", "eight", "seven"), 3),
    ("the largest ocean", "What is the largest ocean on Earth?", ("Atlantic", "Pacific", "Indian", "Arctic"), 1),
    ("water", "At how many degrees Celsius does water boil at sea level?", ("100", "90", "80", "120"), 0),
    ("the largest mammal", "Which animal is the largest mammal?", ("elephant", "giraffe", "blue whale", "hippo"), 2),
    ("the sky", "What color is the sky on a clear day?", ("green", "red", "yellow", "blue"), 3),
    ("a spider", "How many legs does a spider have?", ("eight", "six", "ten", "four"), 0),
    ("ice", "What is ice made of?", ("sand", "frozen water", "salt", "glass"), 1),
))


@dataclass(frozen=True)
class FormatStyle:
    """Which QA template and which MCQ variant a run asks its facts in."""

    qa_template: str = DEFAULT_QA_TEMPLATE
    mcq_format: str = DEFAULT_MCQ_FORMAT

    def __post_init__(self):
        if self.qa_template not in QA_TEMPLATES:
            raise FactDataError(f"unknown QA template {self.qa_template!r}: use one of {', '.join(QA_TEMPLATES)}")
        if self.mcq_format not in MCQ_FORMATS:
            raise FactDataError(f"unknown MCQ format {self.mcq_format!r}: use one of {', '.join(MCQ_FORMATS)}")


@dataclass(frozen=True)
class FormatItem:
    fact_id: str
    prompts: tuple[str, ...]
    true_answer: str  # the continuation that counts as the truth (" football", or " B" in MCQ)
    new_answer: str | None  # the edit target's continuation, None when the fact has none
    candidates: tuple[str, ...] | None  # normalise over these; None = full vocabulary
    options: tuple[str, ...] = ()  # MCQ: the options in the order shown (A, B, ...)
    scoring: str = "first_token"  # one of SCORINGS; "sum"/"mean" need candidates


@dataclass(frozen=True)
class FormatPrompts:
    format: str
    items: list[FormatItem]
    missing: list[str]  # ids of facts this format cannot ask


def is_athletes(facts: FactSet) -> bool:
    from mechunlearn.facts.loaders import SPORTS_ANSWERS  # here: a config needs no pandas

    return facts.answers is not None and set(facts.answers) <= set(SPORTS_ANSWERS)


def system_line(facts: FactSet, style: FormatStyle) -> str:
    if style.qa_template == "concise":
        return facts.system
    return PAPER_SYSTEM_SPORTS if is_athletes(facts) else PAPER_SYSTEM_GENERAL


def qa_example(facts: FactSet, relation: str) -> str:
    """The solved example the paper template shows before a question of ``relation``: the
    athletes' authored one, else the never-evaluated fact ``facts.example_for(relation)``, else none."""
    if is_athletes(facts):
        return PAPER_EXAMPLE_SPORTS
    example = facts.example_for(relation)
    return f"Question: {example.question} Answer:{example.target_true}\n" if example else ""


def qa_prompt(facts: FactSet, question: str, style: FormatStyle | None = None, relation: str = "",
              example: str | None = None) -> str:
    """The QA prompt of ``question`` (a fact of ``relation``); ``example`` overrides the solved example."""
    style = style or FormatStyle()
    if style.qa_template == "concise":
        header = f"{facts.system}\n" if facts.system else ""
        return f"{header}Question: {question}\nAnswer:"
    example = qa_example(facts, relation) if example is None else example
    return f"{system_line(facts, style)} {example}Question: {question} Answer:"


def qa_examples_record(facts: FactSet, set_aside=()) -> list[dict]:
    """The solved example the QA prompts of ``facts`` show per relation, and where it came from
    (``set_aside``: the ids of a run's localization facts): what a run records."""
    set_aside = set(set_aside)
    out = []
    athletes = is_athletes(facts)
    for r in facts.relations:
        e = None if athletes else facts.example_for(r)
        if athletes:
            record = {"id": None, "question": "What sport does Tiger Woods play?", "answer": "golf",
                      "source": "the paper's authored example (golf is no athlete's answer in the data)"}
        elif e is None:
            record = {"id": None, "question": None, "answer": None,
                      "source": "none: no never-evaluated fact of this relation has a question"}
        else:
            record = {"id": e.id, "question": e.question, "answer": e.target_true.strip(),
                      "source": "a localization fact (set aside, never evaluated)" if e.id in set_aside
                      else "a maintain-train fact (trained on to be kept, never evaluated)"}
        out.append({"relation": r, **record})
    return out


def unaskable(facts: FactSet, formats) -> dict[str, str]:
    """The formats in ``formats`` that no fact of ``facts`` can be asked in, each with what it needs."""
    out = {}
    for fmt in formats:
        if fmt == "train":
            continue
        if fmt == "qa":
            ok = any(f.question for f in facts)
        elif fmt == "mcq":
            ok = any(f.question and len(set(f.mc_choices)) >= 2 for f in facts)
        else:
            ok = any(getattr(f, {"paraphrase": "paraphrases"}.get(fmt, fmt)) for f in facts)
        if not ok:
            out[fmt] = NEEDS[fmt]
    return out


def skipped_line(where: str, skipped: dict[str, str]) -> str:
    """One line: which formats were skipped, and what the facts lack."""
    needs = "; ".join(f"{fmt} needs {need}" for fmt, need in skipped.items())
    return f"{where}: formats {', '.join(skipped)} skipped: no fact can be asked in them ({needs})"


def mcq_block(question: str, options: tuple[str, ...]) -> str:
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def mcq_shots(facts: FactSet, mcq_format: str) -> int:
    """Solved examples a letter variant shows (the paper's: 1 for athletes, 8 for CounterFact)."""
    if mcq_format == "paper":
        return 1 if is_athletes(facts) else 8
    if mcq_format == "options-shown":
        return 1
    if mcq_format.startswith("letter-"):
        return int(mcq_format.removeprefix("letter-").removesuffix("shot"))
    return 0


def solved_examples(facts: FactSet, k: int) -> list[SolvedExample]:
    """The first ``k`` authored examples whose subject and question are not among ``facts``."""
    subjects = {f.subject.casefold() for f in facts}
    questions = {f.question.casefold() for f in facts if f.question}
    pool = SPORTS_EXAMPLES if is_athletes(facts) else GENERAL_EXAMPLES
    usable = [e for e in pool if e.subject.casefold() not in subjects and e.question.casefold() not in questions]
    if len(usable) < k:
        raise FactDataError(f"only {len(usable)} authored solved examples are not facts of {facts.name!r}; {k} asked")
    return usable[:k]


def mcq_examples(facts: FactSet, k: int, answer_with_text: bool = False) -> str:
    """``k`` solved examples, each answered with its letter (or with its option's text)."""
    shown = []
    for e in solved_examples(facts, k):
        answer = e.options[e.answer] if answer_with_text else LETTERS[e.answer]
        shown.append(f"{mcq_block(e.question, e.options)} {answer}\n\n")
    return "".join(shown)


def mcq_prompt(facts: FactSet, question: str, options: tuple[str, ...], style: FormatStyle) -> str:
    """The prompt of a shown-options variant (letter variants and ``options-shown``)."""
    system = system_line(facts, style)
    header = f"{system}\n" if system else ""
    k = mcq_shots(facts, style.mcq_format)
    return header + mcq_examples(facts, k, style.mcq_format == "options-shown") + mcq_block(question, options)


def option_order(fact: Fact, seed: int) -> tuple[str, ...]:
    """The fact's MC options in a seeded order (the same for a fact and seed, whatever the set)."""
    options = list(dict.fromkeys(fact.mc_choices))
    random.Random(f"{seed}:{fact.id}").shuffle(options)
    return tuple(options)


def _check_closed(facts: FactSet) -> None:
    for f in facts:
        if f.target_true not in facts.answers:
            raise FactDataError(f"fact {f.id!r}: true answer {f.target_true!r} is not in the answer set {facts.answers}")
        if f.target_new is not None and f.target_new not in facts.answers:
            raise FactDataError(f"fact {f.id!r}: edit target {f.target_new!r} is not in the answer set {facts.answers}")


def _mcq_item(facts: FactSet, fact: Fact, seed: int, style: FormatStyle) -> FormatItem | None:
    if not fact.question or len(fact.mc_choices) < 2:
        return None
    options = option_order(fact, seed)
    if len(options) > len(LETTERS):
        raise FactDataError(f"fact {fact.id!r} has {len(options)} options; at most {len(LETTERS)} are supported")
    true = fact.target_true.strip()
    if true not in options:
        raise FactDataError(f"fact {fact.id!r}: true answer {true!r} is not among its options {options}")
    new = fact.target_new.strip() if fact.target_new else None
    fmt = style.mcq_format
    if fmt in ("option-likelihood", "option-likelihood-norm", "options-shown"):
        prompt = (mcq_prompt(facts, fact.question, options, style) if fmt == "options-shown"
                  else qa_prompt(facts, fact.question, style, fact.relation))
        text = {o: f" {o}" for o in options}
        return FormatItem(fact.id, (prompt,), text[true], text.get(new) if new else None, tuple(text.values()),
                          options, "mean" if fmt == "option-likelihood-norm" else "sum")
    letter = {o: f" {LETTERS[i]}" for i, o in enumerate(options)}
    prompt = mcq_prompt(facts, fact.question, options, style)
    return FormatItem(fact.id, (prompt,), letter[true], letter.get(new) if new else None, tuple(letter.values()), options)


def build_format(facts: FactSet, fmt: str, seed: int = 0, style: FormatStyle | None = None) -> FormatPrompts:
    if fmt not in FORMATS:
        raise FactDataError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    style = style or FormatStyle()
    if facts.closed:
        _check_closed(facts)
    candidates = facts.answers if facts.closed else None
    items, missing = [], []
    for f in facts:
        if fmt == "mcq":
            item = _mcq_item(facts, f, seed, style)
        else:
            prompts = {
                "train": (f.prompt,),
                "qa": (qa_prompt(facts, f.question, style, f.relation),) if f.question else (),
                "paraphrase": tuple(f.paraphrases),
                "neighborhood": tuple(f.neighborhood),
            }[fmt]
            item = FormatItem(f.id, prompts, f.target_true, f.target_new, candidates) if prompts else None
        if item is None:
            missing.append(f.id)
        else:
            items.append(item)
    return FormatPrompts(fmt, items, missing)


def _train_template(facts: FactSet) -> str:
    first = facts.facts[0]
    template = first.prompt.replace(first.subject, "{subject}")
    if all(f.prompt == template.replace("{subject}", f.subject) for f in facts):
        return template
    return "{prompt} (each fact's own training prompt)"


def format_templates(facts: FactSet, formats, style: FormatStyle | None = None,
                     example: str | None = None) -> dict[str, str]:
    """The text each format shows a model, with placeholders for the fact's parts ({subject},
    {question}, {option A} ...), and how its answer is scored: what a run records. The QA solved
    example: ``example`` when given (not for athletes, whose example is fixed), else the facts'
    own when they have one relation, else :data:`EXAMPLE_PLACEHOLDER`."""
    style = style or FormatStyle()
    relations = facts.relations
    if is_athletes(facts) or (example is None and len(relations) == 1):
        example = qa_example(facts, relations[0])
    elif example is None:
        example = EXAMPLE_PLACEHOLDER
    out = {}
    for fmt in formats:
        if fmt == "train":
            out[fmt] = _train_template(facts) + "  [scored: first answer token]"
        elif fmt == "qa":
            out[fmt] = qa_prompt(facts, "{question}", style, example=example) + "  [scored: first answer token]"
        elif fmt == "mcq":
            options = tuple(f"{{option {x}}}" for x in LETTERS[:4])
            m = style.mcq_format
            if m in ("option-likelihood", "option-likelihood-norm"):
                text = qa_prompt(facts, "{question}", style, example=example)
            else:
                text = mcq_prompt(facts, "{question}", options, style)
            scored = {"option-likelihood": "each option's text, summed log-probability, softmax over the options",
                      "option-likelihood-norm": "each option's text, mean log-probability per token, softmax over "
                                                "the options",
                      "options-shown": "each option's text, summed log-probability, softmax over the options"}
            out[fmt] = f"{text}  [{m}; scored: {scored.get(m, 'the option letter, softmax over the letters shown')}]"
        else:
            out[fmt] = f"{{{fmt} prompts}} (each fact's own)  [scored: first answer token]"
    return out
