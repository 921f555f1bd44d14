"""QA templates and MCQ variants (evaluate/formats.py): the paper's text, solved examples that
are never evaluated facts, and the templates a run records. No model needed."""

import pytest

from mechunlearn.errors import FactDataError, MechunlearnError
from mechunlearn.evaluate import EvalConfig
from mechunlearn.evaluate.formats import (
    GENERAL_EXAMPLES,
    LETTERS,
    MCQ_FORMATS,
    SPORTS_EXAMPLES,
    FormatStyle,
    build_format,
    format_templates,
    mcq_shots,
    option_order,
)
from mechunlearn.facts import Fact, FactSet, load_builtin_athletes

PAPER_QA = ("You are a helpful chatbot that answers questions about athletes. Please be maximally helpful and "
            "factually correct. Question: What sport does Tiger Woods play? Answer: golf\n"
            "Question: What sport does {athlete} play? Answer:")


@pytest.fixture(scope="module")
def athletes() -> FactSet:
    facts = load_builtin_athletes()
    return facts.subset(facts.facts[:10])


@pytest.fixture(scope="module")
def open_facts() -> FactSet:
    return FactSet("open", tuple(
        Fact(f"f{i}", s, f"The mother tongue of {s} is", " French", " English",
             question=f"What is the mother tongue of {s}?", mc_choices=("French", "English", "Spanish", "Italian"))
        for i, s in enumerate(("Zed", "Yan", "Bo"))), None)


def test_qa_template_is_the_papers_by_default_and_concise_by_name(athletes):
    for f, item in zip(athletes, build_format(athletes, "qa").items, strict=True):
        assert item.prompts == (PAPER_QA.format(athlete=f.subject),)
    concise = build_format(athletes, "qa", style=FormatStyle(qa_template="concise")).items
    assert concise[0].prompts == (f"{athletes.system}\nQuestion: {athletes.facts[0].question}\nAnswer:",)
    assert "Please be concise" in athletes.system


def count_solved_examples(prompt: str) -> int:
    return sum(prompt.count(f"\nAnswer: {x}\n\n") for x in LETTERS)


@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_k_shot_letter_prompt_holds_exactly_k_solved_examples_none_an_evaluated_fact(athletes, open_facts, k):
    for facts, pool in ((athletes, SPORTS_EXAMPLES), (open_facts, GENERAL_EXAMPLES)):
        built = build_format(facts, "mcq", 0, FormatStyle(mcq_format=f"letter-{k}shot"))
        subjects = {f.subject for f in facts}
        for item, fact in zip(built.items, facts, strict=True):
            prompt = item.prompts[0]
            assert count_solved_examples(prompt) == k
            assert prompt.count("Question: ") == k + 1
            shown = [e for e in pool if f"Question: {e.question}\n" in prompt]
            assert len(shown) == k and not {e.subject for e in shown} & subjects
            assert prompt.endswith(f"Question: {fact.question}\n"
                                   + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)) + "\nAnswer:")
            assert item.candidates == tuple(f" {LETTERS[i]}" for i in range(len(item.options)))


def test_an_example_about_an_evaluated_subject_is_left_out():
    serena = Fact("sw", "Serena Williams", "Fact: Serena Williams plays the sport of", " basketball", " football",
                  question="What sport does Serena Williams play?",
                  mc_choices=("basketball", "football", "baseball", "golf"))
    facts = FactSet("s", (serena,), load_builtin_athletes().answers, (" golf",), load_builtin_athletes().system)
    prompt = build_format(facts, "mcq", 0, FormatStyle(mcq_format="letter-3shot")).items[0].prompts[0]
    assert prompt.count("Serena Williams") == 1  # only the evaluated question
    assert count_solved_examples(prompt) == 3 and "Wayne Gretzky" in prompt


def test_paper_mcq_is_one_shot_for_athletes_and_eight_shot_elsewhere(athletes, open_facts):
    assert mcq_shots(athletes, "paper") == 1 and mcq_shots(open_facts, "paper") == 8
    paper = build_format(athletes, "mcq", 0, FormatStyle(mcq_format="paper")).items[0].prompts[0]
    assert paper == build_format(athletes, "mcq", 0, FormatStyle(mcq_format="letter-1shot")).items[0].prompts[0]
    assert "Tiger Woods" in paper and paper.startswith("You are a helpful chatbot that answers questions about athletes.")
    assert count_solved_examples(build_format(open_facts, "mcq", 0, FormatStyle(mcq_format="paper")).items[0].prompts[0]) == 8


def test_likelihood_variants_score_option_texts(athletes):
    for variant, scoring in (("option-likelihood", "sum"), ("option-likelihood-norm", "mean"), ("options-shown", "sum")):
        for item, fact in zip(build_format(athletes, "mcq", 2, FormatStyle(mcq_format=variant)).items, athletes,
                              strict=True):
            assert item.scoring == scoring
            assert item.options == option_order(fact, 2)
            assert item.candidates == tuple(f" {o}" for o in item.options)
            assert (item.true_answer, item.new_answer) == (fact.target_true, fact.target_new)
    cloze = build_format(athletes, "mcq", 0, FormatStyle(mcq_format="option-likelihood")).items[0].prompts[0]
    assert cloze == PAPER_QA.format(athlete=athletes.facts[0].subject)  # the question, no options shown
    shown = build_format(athletes, "mcq", 0, FormatStyle(mcq_format="options-shown")).items[0].prompts[0]
    assert "\nAnswer: golf\n\n" in shown and "A. " in shown  # its solved example answers with the text


def test_templates_a_run_used(athletes, open_facts):
    t = format_templates(athletes, ("train", "qa", "mcq"), FormatStyle(mcq_format="letter-3shot"))
    assert t["train"].startswith("Fact: Tiger Woods plays the sport of golf\nFact: {subject} plays the sport of")
    assert t["qa"].startswith(PAPER_QA.replace("What sport does {athlete} play?", "{question}"))
    assert "letter-3shot" in t["mcq"] and count_solved_examples(t["mcq"]) == 3 and "{option D}" in t["mcq"]
    assert format_templates(open_facts, ("train",))["train"].startswith("The mother tongue of {subject} is")
    mixed = FactSet("m", (open_facts.facts[0], Fact("g", "Rome", "Rome is in", " Italy")), None)
    assert format_templates(mixed, ("train",))["train"].startswith("{prompt}")


def test_unknown_variant_names_are_refused_in_one_line():
    with pytest.raises(FactDataError, match="unknown MCQ format 'letters'"):
        FormatStyle(mcq_format="letters")
    with pytest.raises(FactDataError, match="unknown QA template"):
        FormatStyle(qa_template="papr")
    with pytest.raises(MechunlearnError, match="MCQ format"):
        EvalConfig(mcq_format="letter-2shot")
    assert EvalConfig(mcq_format="paper", qa_template="concise").style == FormatStyle("concise", "paper")
    assert set(MCQ_FORMATS) >= {"paper", "letter-0shot", "letter-1shot", "letter-3shot", "letter-8shot",
                                "option-likelihood", "option-likelihood-norm"}
