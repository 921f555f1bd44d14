"""The unedited embedded Gemma 3 270M on built-in athletes it knows: formats and attacks.

Measured facts this file pins down (printed with ``pytest -s``):
* training prompt and QA prompt: the model answers the athletes it knows (P(true) well above
  the 1/4 of chance over the four answers);
* multiple choice: scored on the option LETTER (the paper's format) the 270M model is AT CHANCE
  (mean P(true letter) ~0.25 with 0, 1, 3 or 8 solved examples); scored on each option's text
  (option-likelihood, the default; docs/mcq_formats.md) it answers like the QA prompt.
"""

import random

import pytest

from mechunlearn.evaluate import (
    ProbeConfig,
    RelearnConfig,
    SoftPromptConfig,
    evaluate_facts,
    probe_attack,
    relearn,
    softprompt_attack,
)
from mechunlearn.evaluate.formats import FormatStyle
from mechunlearn.facts import split_facts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def split(gemma_known_athletes):
    """8 edited + 40 maintain athletes: small enough for two CPU cores."""
    sample = random.Random(1).sample(gemma_known_athletes.facts, 48)
    return split_facts(gemma_known_athletes.subset(sample), forget=8, seed=0)


def test_unedited_model_answers_known_athletes_in_train_and_qa_formats(gemma, gemma_known_athletes):
    facts = gemma_known_athletes.subset(random.Random(0).sample(gemma_known_athletes.facts, 16))
    aggs = evaluate_facts(gemma, facts, ("train", "qa", "mcq"), seed=0).aggregates()
    letter = evaluate_facts(gemma, facts, ("mcq",), seed=0, style=FormatStyle(mcq_format="paper")).aggregates()["mcq"]
    for fmt, a in aggs.items():
        print(f"unedited Gemma 3 270M, {fmt}: P(true) {a['p_true']:.3f}  P(edit target) {a['p_new']:.3f}  "
              f"accuracy {a['accuracy']:.3f}  (n={a['n']})")
    # over the four answers: the one-shot "Tiger Woods ... golf" example gives golf some mass
    assert aggs["train"]["p_true"] > 0.5 and aggs["train"]["accuracy"] > 0.75
    assert aggs["qa"]["p_true"] > 0.5 and aggs["qa"]["accuracy"] > 0.7
    assert aggs["qa"]["p_new"] < 0.25
    # At chance on letter-scored multiple choice (see the module docstring): near 1/4, not above.
    assert 0.15 < letter["p_true"] < 0.4
    assert aggs["mcq"]["p_true"] > 0.5 and aggs["mcq"]["accuracy"] > 0.7  # option-likelihood
    assert aggs["mcq"]["n"] == 16 and aggs["mcq"]["n_missing"] == 0


def test_probe_reads_the_truth_of_an_unedited_model(gemma, split):
    result = probe_attack(gemma, split, ProbeConfig(layers=(1, 14)))
    early, late = result["layers"]
    print("probe accuracy / reads truth per layer:", [(r["layer"], r["accuracy"], r["reads_true"]) for r in result["layers"]])
    assert late["accuracy"] > 0.8 and late["accuracy"] > early["accuracy"]
    assert late["reads_true"] >= 0.75  # nothing was edited: the truth is there


def test_short_relearning_and_soft_prompt_keep_an_unedited_model_right(gemma, split):
    # rank 64 keeps this CPU test short; the paper's rank 512 is the default and runs the same code
    result = relearn(gemma, split, RelearnConfig(rank=64, steps=1, eval_every=1, n_maintain=1))
    print(f"relearning (LoRA r=64, 1 step): P(true) {result['p_true_before']:.3f} -> {result['p_true_after']:.3f} "
          f"in {result['seconds']:.0f}s")
    assert result["p_true_before"] > 0.45  # over four answers; golf takes some mass (the one-shot example)
    assert result["p_true_after"] > result["p_true_before"] - 0.05
    soft = softprompt_attack(gemma, split, SoftPromptConfig(steps=5, restarts=1))
    print(f"soft prompt (bound {soft['bound']:.1f}): P(true) {soft['p_true_before']['train']:.3f} -> "
          f"{soft['p_true_after']['train']:.3f}, random {soft['p_true_random']['train']:.3f}")
    assert soft["restarts"][0]["norm"] <= soft["bound"] * (1 + 1e-5)
    assert soft["p_true_after"]["train"] > 0.5
