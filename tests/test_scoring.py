"""Answer -> token scoring (models/scoring.py) on tiny models: first tokens, answer columns, and
whole-continuation log-probabilities with a planted preference."""

import copy

import pytest
import torch
from torch import nn

from mechunlearn.edit.data import fact_term
from mechunlearn.errors import FactDataError
from mechunlearn.evaluate.attacks.common import answer_columns, true_token_ids
from mechunlearn.evaluate.formats import FormatStyle, build_format
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.facts import Fact, FactSet, load_builtin_athletes
from mechunlearn.localize.metrics import AnswerScorer
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import from_model
from mechunlearn.models.scoring import (
    answer_token_id,
    answer_tokens,
    continuation_logprobs,
    distinct_first_tokens,
    first_token_clashes,
    last_token_logits,
)
from mechunlearn.models.tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def athletes() -> FactSet:
    facts = load_builtin_athletes()
    return facts.subset(facts.facts[:12])


def test_answer_tokens_columns_match_the_answer_set(tiny_llama, athletes):
    tok = tiny_llama.tokenizer
    tokens = answer_tokens(tok, athletes)
    assert tokens.answers == [answer_token_id(tok, a) for a in athletes.answers]
    for f, t, n, tc, nc in zip(athletes, tokens.true, tokens.new, tokens.true_column, tokens.new_column, strict=True):
        assert athletes.answers[int(tc)] == f.target_true and athletes.answers[int(nc)] == f.target_new
        assert int(t) == answer_token_id(tok, f.target_true) and int(n) == answer_token_id(tok, f.target_new)
    # every caller reads the same columns from the one module
    ids, cols = answer_columns(tok, athletes)
    assert ids == tokens.answers and torch.equal(cols, tokens.true_column)
    assert torch.equal(true_token_ids(tok, athletes), tokens.true)
    assert torch.equal(AnswerScorer(tok, athletes).true_pos, tokens.true_column)
    term = fact_term(tok, athletes, "new", over="answers")
    assert term.columns == tokens.answers and torch.equal(term.targets, tokens.new_column)
    assert torch.equal(fact_term(tok, athletes, "true").targets, tokens.true)


def test_shared_first_tokens_and_outside_answers_are_refused(tiny_llama, athletes):
    tok = tiny_llama.tokenizer
    with pytest.raises(FactDataError, match="share a first token"):
        distinct_first_tokens(tok, [" football", " footballs"])
    no_golf = FactSet("x", athletes.facts, (" baseball", " basketball", " golf"))
    assert athletes.facts[0].target_true == " football"
    with pytest.raises(FactDataError, match="not in the answer set"):
        answer_tokens(tok, no_golf)
    clash = Fact("c", "Rome", "Rome is in", " Italy", " Italy")
    fine = Fact("d", "Paris", "Paris is in", " France", " Spain")
    assert first_token_clashes(tok, FactSet("open", (clash, fine))) == ["c"]


def test_continuation_logprobs_equal_the_models_own_token_logprobs(tiny_llama):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    prompts = ["Question: What sport does he play? Answer:", "The mother tongue of Zed is"]
    conts = [" New York", " French"]
    total, count = continuation_logprobs(model, tok, prompts, conts)
    for i, (p, c) in enumerate(zip(prompts, conts, strict=True)):
        head, tail = tok(p)["input_ids"], tok.encode(c, add_special_tokens=False)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([head + tail])).logits[0].float().log_softmax(-1)
        expected = sum(float(logp[len(head) + j - 1, t]) for j, t in enumerate(tail))
        assert float(total[i]) == pytest.approx(expected, abs=1e-4)
        assert int(count[i]) == len(tail)
    # right padding does not move a score: one at a time equals the batch
    alone, _ = continuation_logprobs(model, tok, prompts[1:], conts[1:])
    assert float(alone[0]) == pytest.approx(float(total[1]), abs=1e-5)


def plant_preference(lm, favoured: str, others: list[str], strength: float = 30.0):
    """A copy of ``lm`` whose unembedding adds ``strength`` to every token of ``favoured``: each
    other continuation has a token outside that set, so the model prefers ``favoured``."""
    tok = lm.tokenizer
    boost = set(tok.encode(favoured, add_special_tokens=False))
    assert all(set(tok.encode(o, add_special_tokens=False)) - boost for o in others)
    model = copy.deepcopy(lm.model)
    old = model.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[sorted(boost)] = strength
    model.set_output_embeddings(head)
    return from_model(model, tok, f"planted {favoured!r}")


def test_option_likelihood_picks_the_planted_continuation_that_first_tokens_cannot_tell_apart(tiny_llama):
    tok = tiny_llama.tokenizer
    assert answer_token_id(tok, " New York") == answer_token_id(tok, " New Delhi")  # one first token for both
    fact = Fact("ny", "the city", "The big city is", " New York", " New Delhi",
                question="Which is the big city?", mc_choices=("New York", "New Delhi", "Paris", "Rome"))
    facts = FactSet("cities", (fact,), None)
    options = [f" {o}" for o in fact.mc_choices]
    for favoured in (" New York", " New Delhi"):
        planted = plant_preference(tiny_llama, favoured, [o for o in options if o != favoured])
        for variant in ("option-likelihood", "option-likelihood-norm", "options-shown"):
            row = evaluate_facts(planted, facts, ("mcq",), style=FormatStyle(mcq_format=variant)).rows[0]
            if favoured == " New York":
                assert row.p_true > 0.99 and row.correct == 1.0 and row.edited == 0.0, variant
            else:
                assert row.p_new > 0.99 and row.edited == 1.0 and row.correct == 0.0, variant
    # the unplanted model has no such preference
    row = evaluate_facts(tiny_llama, facts, ("mcq",), style=FormatStyle(mcq_format="option-likelihood")).rows[0]
    assert row.p_true < 0.9


def test_length_normalised_option_scores_are_mean_token_logprobs(tiny_llama):
    fact = Fact("ny", "the city", "The big city is", " New York", " Paris",
                question="Which is the big city?", mc_choices=("New York", "Paris", "Rome", "New Delhi"))
    facts = FactSet("cities", (fact,), None)
    rows = {v: evaluate_facts(tiny_llama, facts, ("mcq",), style=FormatStyle(mcq_format=v)).rows[0]
            for v in ("option-likelihood", "option-likelihood-norm")}
    item = build_format(facts, "mcq", 0, FormatStyle(mcq_format="option-likelihood")).items[0]
    total, count = continuation_logprobs(tiny_llama.model, tiny_llama.tokenizer, [item.prompts[0]] * 4,
                                         list(item.candidates))
    t, n = item.candidates.index(" New York"), item.candidates.index(" Paris")
    summed, mean = total.softmax(-1), (total / count).softmax(-1)
    assert rows["option-likelihood"].p_true == pytest.approx(float(summed[t]), abs=1e-5)
    assert rows["option-likelihood-norm"].p_true == pytest.approx(float(mean[t]), abs=1e-5)
    assert rows["option-likelihood-norm"].p_new == pytest.approx(float(mean[n]), abs=1e-5)
    assert int(count[t]) > int(count[n])  # so the two normalisations really differ
    assert rows["option-likelihood"].p_true != pytest.approx(rows["option-likelihood-norm"].p_true, abs=1e-4)


# --- the shared-prefix scoring paths equal the plain forward ----------------------------------------------------

ONE_SHOT = "Question: What sport does Tiger Woods play? Answer: golf\nQuestion: What sport does"
SHARED = [f"{ONE_SHOT} {name} play? Answer:" for name in ("Tom Brady", "LeBron James", "Al")]
UNRELATED = ["Tom Brady plays the sport of", "The mother tongue of Zed is", "Al"]
OPTIONS = [" football", " New York", " basketball golf", " A"]  # one to three tokens each


def wide_window_gemma():
    """A tiny Gemma 3 whose sliding window holds every test prompt: the path that runs each prompt once for all of
    its options (the window of the embedded model is 512 tokens, far longer than any fact prompt)."""
    from transformers import AutoModelForCausalLM

    from mechunlearn.models.tiny import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer()
    config = tiny_config("gemma", len(tok), 6)
    config.sliding_window = 128
    torch.manual_seed(3)
    return from_model(AutoModelForCausalLM.from_config(config, dtype=torch.float32), tok, "tiny-gemma-wide")


SCORING_MODELS = [*FAMILIES, "gemma-wide"]


@pytest.fixture(scope="module", params=SCORING_MODELS)
def any_lm(request):
    torch.set_num_threads(1)
    return wide_window_gemma() if request.param == "gemma-wide" else tiny_model(request.param, seed=2)


def forward_calls(model, fn):
    calls = []
    handle = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            return fn(), len(calls)
    finally:
        handle.remove()


def option_pairs(prompts):
    return [p for p in prompts for _ in OPTIONS], [o for _ in prompts for o in OPTIONS]


@pytest.mark.parametrize("prompts", [SHARED, UNRELATED], ids=["shared-prefix", "unrelated"])
def test_continuation_scores_of_the_shared_path_equal_one_plain_forward(any_lm, prompts):
    model, tok = any_lm.model, any_lm.tokenizer
    ps, cs = option_pairs(prompts)
    (plain, count), calls_plain = forward_calls(model, lambda: continuation_logprobs(model, tok, ps, cs, shared=False))
    (shared, count2), calls = forward_calls(model, lambda: continuation_logprobs(model, tok, ps, cs))
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
    assert torch.equal(count, count2) and count.min() == 1 and count.max() >= 3
    assert calls_plain == 1
    window = getattr(model.config, "sliding_window", None)
    each_prompt_once = not window or window >= 64
    # common prefix, each prompt once, the continuations' later tokens; no common prefix: one call fewer
    expected = (3 if prompts is SHARED else 2) if each_prompt_once else (2 if prompts is SHARED else 1)
    assert calls == expected
    # one pair at a time (no batch to share with) gives the same numbers
    alone = torch.cat([continuation_logprobs(model, tok, [p], [c])[0] for p, c in zip(ps[:5], cs[:5], strict=True)])
    torch.testing.assert_close(alone, plain[:5], atol=2e-5, rtol=1e-5)
    # single-token options (MCQ letters) are read from the prompt pass alone: no continuation call
    ps, cs = [p for p in prompts for _ in "ABC"], [f" {x}" for _ in prompts for x in "ABC"]
    (letters, _), calls = forward_calls(model, lambda: continuation_logprobs(model, tok, ps, cs))
    torch.testing.assert_close(letters, continuation_logprobs(model, tok, ps, cs, shared=False)[0], atol=2e-5,
                               rtol=1e-5)
    assert calls == (2 if prompts is SHARED else 1)


@pytest.mark.parametrize("prompts", [SHARED, UNRELATED], ids=["shared-prefix", "unrelated"])
def test_last_token_logits_of_the_shared_path_equal_one_plain_forward(any_lm, prompts):
    model, tok = any_lm.model, any_lm.tokenizer
    batch = encode(tok, prompts)
    plain, calls_plain = forward_calls(model, lambda: last_token_logits(model, batch, shared=False))
    shared, calls = forward_calls(model, lambda: last_token_logits(model, batch))
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
    assert (calls_plain, calls) == (1, 2 if prompts is SHARED else 1)
    ids = [answer_token_id(tok, a) for a in (" football", " golf", " basketball")]
    closed = last_token_logits(model, batch, ids)
    torch.testing.assert_close(closed, plain[:, ids], atol=2e-5, rtol=1e-5)
    alone = torch.cat([last_token_logits(model, encode(tok, [p])) for p in prompts])
    torch.testing.assert_close(alone, plain, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mcq_format", ["option-likelihood", "paper"])
def test_evaluation_and_answer_probs_equal_the_plain_forward(tiny_llama, athletes, monkeypatch, mcq_format):
    import functools

    import mechunlearn.evaluate.metrics as metrics
    import mechunlearn.facts.known as known
    from mechunlearn.facts import answer_probs
    from mechunlearn.models.encoding import final_hidden

    style = FormatStyle(mcq_format=mcq_format)
    shared = evaluate_facts(tiny_llama, athletes, ("train", "qa", "mcq"), style=style, batch_size=8).rows
    probs = answer_probs(tiny_llama.model, tiny_llama.tokenizer, athletes, batch_size=8)
    monkeypatch.setattr(metrics, "final_hidden_shared", final_hidden)
    monkeypatch.setattr(metrics, "continuation_logprobs", functools.partial(continuation_logprobs, shared=False))
    monkeypatch.setattr(known, "last_token_logits", functools.partial(last_token_logits, shared=False))
    plain = evaluate_facts(tiny_llama, athletes, ("train", "qa", "mcq"), style=style, batch_size=8).rows
    plain_probs = answer_probs(tiny_llama.model, tiny_llama.tokenizer, athletes, batch_size=8)
    assert [(r.id, r.format, r.correct, r.edited) for r in shared] == [(r.id, r.format, r.correct, r.edited)
                                                                       for r in plain]
    assert len(shared) == 3 * len(athletes)
    for a, b in zip(shared, plain, strict=True):
        assert a.p_true == pytest.approx(b.p_true, abs=1e-5) and a.p_new == pytest.approx(b.p_new, abs=1e-5)
    for a, b in zip(probs, plain_probs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unembed_together_equals_each_part_projected_alone(tiny_llama):
    from mechunlearn.models.scoring import unembed, unembed_together

    d = tiny_llama.model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(3, d, generator=g), None), (torch.randn(2, d, generator=g), [5, 9, 11]),
             (torch.randn(4, d, generator=g), None)]
    together = unembed_together(tiny_llama.model, parts)
    assert [t.shape for t in together] == [(3, tiny_llama.model.config.vocab_size), (2, 3),
                                           (4, tiny_llama.model.config.vocab_size)]
    for t, (h, ids) in zip(together, parts, strict=True):
        torch.testing.assert_close(t, unembed(tiny_llama.model, h, ids))
