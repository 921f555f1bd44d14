"""The latent probe on answers that do not repeat (capital cities, languages): a pairwise probe
that tells the true answer from the edit target, tested on planted ground truth; the class probe
is kept where answer classes can read the edited facts."""

import random

import numpy as np
import pytest

from mechunlearn.evaluate import ProbeConfig, probe_attack
from mechunlearn.evaluate.attacks.probe import PairProbe
from mechunlearn.evaluate.headline import headline
from mechunlearn.facts import Fact, FactSet, Split

pytestmark = pytest.mark.usefixtures("one_thread")

# words of the tiny tokenizer's corpus, each its own first token
WORDS = (" river", " music", " city", " French", " English", " Spanish", " Italian", " German")


def test_pair_probe_reads_answers_it_never_saw_on_planted_hidden_states():
    """Hidden states planted as a linear image of the answer's embedding: the probe, fit on 40
    answers, reads 100 answers it never saw as the one the state carries; a state that carries
    nothing reads at chance."""
    rng = np.random.default_rng(0)
    d = 32
    u = rng.normal(size=(300, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    mix = rng.normal(size=(d, d))

    def states(answers, noise=0.3):
        return u[answers] @ mix.T + noise * rng.normal(size=(len(answers), d))

    seen = np.arange(40)
    probe = PairProbe(states(seen), u[seen])
    true, target = np.arange(100, 200), np.arange(200, 300)  # never in training

    def reads_true(x):
        return float((probe.scores(x, u[true]) > probe.scores(x, u[target])).mean())

    assert reads_true(states(true)) == 1.0  # the state kept the truth
    assert reads_true(states(target)) == 0.0  # the state was overwritten with the target
    blank = states(seen).mean(0) + states(seen).std(0) * rng.normal(size=(100, d))
    assert 0.3 <= reads_true(blank) <= 0.7  # carries no answer: chance


def cued(n: int, seed: int, answers=None, cue_target: bool = False) -> list[Fact]:
    """Made-up people whose name ends in a word (a feature the residual carries): their answer's
    (or, ``cue_target``, their edit target's: an edit that wrote the target in). ``answers``:
    true answers unrelated to the cue (a control)."""
    rng = random.Random(seed)
    facts = []
    for i in range(n):
        cue = WORDS[i % len(WORDS)]
        answer = answers[i] if answers else cue
        target = WORDS[(WORDS.index(answer) + 1 + i % 3) % len(WORDS)]
        if cue_target:
            answer, target = target, cue
        name = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).title()
        subject = f"{name}{cue}"
        facts.append(Fact(f"{seed}-{i}", subject, f"The mother tongue of {subject} is", answer, target,
                          relation="mother tongue"))
    return facts


def open_split(facts, n_edit=16, n_test=24, edited=None) -> Split:
    def fs(part, name):
        return FactSet(name, tuple(part))  # open answers: no closed set

    edit, test, train = facts[:n_edit], facts[n_edit:n_edit + n_test], facts[n_edit + n_test:]
    edit = edited or edit
    return Split(fs(edit, "forget"), fs(edit, "forget"), fs(train, "mt"), fs(test, "mte"), 0, "planted", "random")


def test_pairwise_probe_reads_a_planted_cue_in_a_tiny_model(tiny_llama):
    facts = cued(160, seed=3)
    result = probe_attack(tiny_llama, open_split(facts), ProbeConfig(form="pairwise"))
    assert result["form"] == "pairwise" and result["chance"] == 0.5 and result["classes"] is None
    assert (result["n_train"], result["n_test"], result["n_readable_true"], result["n_readable_target"]) == (120, 24, 16, 16)
    assert max(r["accuracy"] for r in result["layers"]) >= 0.9
    assert result["reads_true_best"] >= 0.8 and result["reads_target_best"] <= 0.2
    for row in result["layers"]:  # every edited fact has a target: the probe reads one or the other
        assert row["reads_true"] + row["reads_target"] == pytest.approx(1.0)

    # edited facts whose residual carries the edit target (as if the edit wrote it in): read as the target
    overwritten = probe_attack(tiny_llama, open_split(facts, edited=cued(16, seed=9, cue_target=True)),
                               ProbeConfig(form="pairwise"))
    assert overwritten["reads_target_best"] >= 0.8 and overwritten["reads_true_best"] <= 0.2

    rng = random.Random(0)  # control: answers unrelated to the cue cannot be read
    control = probe_attack(tiny_llama, open_split(cued(160, seed=3, answers=[rng.choice(WORDS) for _ in range(160)])),
                           ProbeConfig(form="pairwise"))
    assert max(r["accuracy"] for r in control["layers"]) <= 0.75


def distinct(n: int) -> list[Fact]:
    """An open relation whose answers never repeat: each fact its own answer."""
    words = [" river", " music", " city", " French", " English", " Spanish", " Italian", " German", " football",
             " baseball", " basketball", " golf", " Tiger", " Woods", " sport", " helpful", " chatbot", " answers",
             " questions", " athletes", " mother", " tongue", " Question", " Options"]
    return [Fact(f"c{i}", f"Land{i}", f"The capital of Land{i} is", words[i], words[(i + 5) % n], relation="capital")
            for i in range(n)]


def test_auto_takes_the_pairwise_probe_when_answers_do_not_repeat(tiny_llama):
    facts = distinct(24)
    split = open_split(facts, n_edit=6, n_test=4)
    result = probe_attack(tiny_llama, split, ProbeConfig(layers=(1, 3)))  # the class probe would stop the run
    assert result["form"] == "pairwise"
    assert "answer classes do not fit" in result["notes"][0]
    assert [r["layer"] for r in result["layers"]] == [1, 3]
    assert result["edited_facts"] == [f.id for f in facts[:6]] and result["n_train"] == 14
    assert all(0 <= r["accuracy"] <= 1 and r["p_true"] is None for r in result["layers"])
    assert result["reads_true"] == result["layers"][1]["reads_true"]  # the upper half of 4 layers: layer 3


def test_a_probe_that_cannot_be_fit_is_skipped_with_its_reason(tiny_llama):
    facts = distinct(8)
    same = [Fact(f.id, f.subject, f.prompt, f.target_true, None, relation=f.relation) for f in facts]
    # each maintain-test fact is alone in its relation and has no edit target: nothing to tell it from
    lonely = [Fact("t", "Land9", "The capital of Land9 is", " city", None, relation="other")]
    split = Split(FactSet("f", tuple(facts[:2])), FactSet("f", tuple(facts[:2])), FactSet("m", tuple(same[2:])),
                  FactSet("t", tuple(lonely)), 0, "planted", "random")
    result = probe_attack(tiny_llama, split, ProbeConfig(layers=(1,)))
    assert result["form"] == "pairwise" and result["layers"] == []
    assert result["skipped"] == "latent probe skipped: no maintain-test fact has an answer to tell its own from"
    assert result["reads_true"] is None and result["reads_target"] is None
    flat = headline({"aggregates": {}}, {"maintain": {"aggregates": {}}, "lm_loss": {"loss": 1.0, "perplexity": 2.7}},
                    {"probe": result})
    assert flat["probe.truth"] is None and flat["probe.best_layer_accuracy"] is None


def test_closed_answers_keep_the_class_probe(tiny_llama):
    from mechunlearn.facts import load_facts, split_facts

    athletes = load_facts("sports")
    split = split_facts(athletes.subset(random.Random(0).sample(athletes.facts, 40)), forget=8, seed=0)
    result = probe_attack(tiny_llama, split, ProbeConfig(layers=(2,)))
    assert result["form"] == "classes" and result["classes"] == ["football", "baseball", "basketball"]
