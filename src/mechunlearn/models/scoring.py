"""Read logits only where a metric or loss needs them, from batches ``encoding.py`` makes.

The vocabulary projection is applied only to
each prompt's last real token, and only to the answer tokens when a closed answer set is given
(Gemma 3 has 262k tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mechunlearn.errors import FactDataError
from mechunlearn.models.encoding import Encoded, final_hidden
from mechunlearn.models.prefix import (
    MIN_PREFIX,
    PrefixKV,
    final_hidden_shared,
    forward_suffix,
    run_recorded,
    shared_prefix_length,
)


def answer_token_id(tokenizer, answer: str, what: str = "answer") -> int:
    """First token of ``answer`` as it follows the prompt (answers carry their leading space)."""
    ids = tokenizer.encode(answer, add_special_tokens=False)
    if not ids:
        raise FactDataError(f"{what} {answer!r} tokenizes to nothing")
    return ids[0]


def _softcap(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def unembed(model: nn.Module, hidden: torch.Tensor, token_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    head = model.get_output_embeddings()
    if token_ids is None:
        return _softcap(model, head(hidden))
    idx = torch.as_tensor(token_ids, device=hidden.device)
    logits = hidden @ head.weight[idx].T.to(hidden.dtype)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[idx]
    return _softcap(model, logits)


def unembed_together(model: nn.Module, parts: Sequence[tuple[torch.Tensor, Sequence[int] | torch.Tensor | None]]
                     ) -> list[torch.Tensor]:
    """:func:`unembed` of each ``(hidden [n, d], token_ids)`` part. The full-vocabulary parts share
    one matmul: on a CPU, reading a large vocabulary matrix costs more than the rows it multiplies
    (a 16-row pass over Gemma's 262k x 640 head takes ~70% as long as a 126-row one)."""
    out: list[torch.Tensor | None] = [None] * len(parts)
    full = [i for i, (_, ids) in enumerate(parts) if ids is None]
    if full:
        logits = unembed(model, torch.cat([parts[i][0] for i in full]))
        for i, rows in zip(full, logits.split([parts[i][0].shape[0] for i in full]), strict=True):
            out[i] = rows
    for i, (hidden, ids) in enumerate(parts):
        if ids is not None:
            out[i] = unembed(model, hidden, ids)
    return out


def last_token_logits(model: nn.Module, batch: Encoded, token_ids: Sequence[int] | torch.Tensor | None = None,
                      shared: bool = True) -> torch.Tensor:
    """Logits at the last real token: [B, vocab], or [B, len(token_ids)] for a closed set. With
    ``shared`` the prompts' common prefix runs once (``models.prefix``); else one plain forward."""
    hidden = final_hidden_shared(model, batch) if shared else final_hidden(model, batch)
    return unembed(model, hidden, token_ids).float()


def batched(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def distinct_first_tokens(tokenizer, answers: Sequence[str], what: str = "answer") -> list[int]:
    """First token of each answer; refuses answers that share one (they could not be told apart)."""
    ids = [answer_token_id(tokenizer, a, what) for a in answers]
    if len(set(ids)) != len(ids):
        raise FactDataError(f"{what}s {tuple(answers)} share a first token: they cannot be told apart")
    return ids


@dataclass(frozen=True)
class AnswerTokens:
    """The first tokens of a fact set's answers, and for a closed set each answer's column."""

    true: torch.Tensor  # [N] first token of each fact's true answer
    new: torch.Tensor  # [N] first token of its edit target; -1 when it has none
    answers: list[int] | None  # first tokens of the closed answer set (distinct); None = open vocabulary
    true_column: torch.Tensor | None  # [N] position of the true answer in `answers`
    new_column: torch.Tensor | None  # [N] position of the edit target in `answers`; -1 when none or outside

    def ids(self, which: str) -> torch.Tensor:
        return self.true if which == "true" else self.new

    def columns(self, which: str) -> torch.Tensor:
        return self.true_column if which == "true" else self.new_column


def fact_answer_ids(tokenizer, facts, which: str = "true") -> list[int]:
    """First token of each fact's true answer (``which="true"``) or edit target (``"new"``; -1 when it has none)."""
    if which == "true":
        return [answer_token_id(tokenizer, f.target_true, f"answer of {f.id!r}") for f in facts]
    return [answer_token_id(tokenizer, f.target_new, f"edit target of {f.id!r}") if f.target_new else -1 for f in facts]


def answer_tokens(tokenizer, facts) -> AnswerTokens:
    """First tokens of every fact's true answer and edit target (facts: a ``FactSet``). A closed
    set's answers must have distinct first tokens, and every true answer must be one of them."""
    true, new = fact_answer_ids(tokenizer, facts, "true"), fact_answer_ids(tokenizer, facts, "new")
    if facts.answers is None:
        return AnswerTokens(torch.tensor(true), torch.tensor(new), None, None, None)
    answers = distinct_first_tokens(tokenizer, facts.answers)
    where = {t: i for i, t in enumerate(answers)}
    outside = [f.id for f, t in zip(facts, true, strict=True) if t not in where]
    if outside:
        raise FactDataError(f"true answers of {outside[:5]} are not in the answer set {facts.answers}")
    return AnswerTokens(torch.tensor(true), torch.tensor(new), answers,
                        torch.tensor([where[t] for t in true]), torch.tensor([where.get(t, -1) for t in new]))


def first_token_clashes(tokenizer, facts) -> list[str]:
    """Ids of facts whose edit target starts with the same token as the true answer (an edit
    of such a fact cannot be scored)."""
    return [f.id for f in facts
            if f.target_new and answer_token_id(tokenizer, f.target_new) == answer_token_id(tokenizer, f.target_true)]


@dataclass
class Continuations:
    """Prompts with a continuation each, and the positions whose next-token logits score it."""

    batch: Encoded  # prompt + continuation, right-padded
    rows: torch.Tensor  # [M] the sequence (index into the inputs) of each scored position
    positions: torch.Tensor  # [M] the position whose output predicts the token
    targets: torch.Tensor  # [M] the continuation token predicted there

    def to(self, device) -> Continuations:
        return Continuations(self.batch.to(device), self.rows.to(device), self.positions.to(device),
                             self.targets.to(device))


def encode_continuations(tokenizer, prompts: Sequence[str], continuations: Sequence[str], device=None) -> Continuations:
    """Token ids of ``prompt`` followed by those of ``continuation`` (tokenized on its own, as
    answers are everywhere: with its leading space, without special tokens)."""
    seqs, rows, positions, targets = [], [], [], []
    for i, (prompt, cont) in enumerate(zip(prompts, continuations, strict=True)):
        head = tokenizer(prompt)["input_ids"]
        tail = tokenizer.encode(cont, add_special_tokens=False)
        if not tail:
            raise FactDataError(f"continuation {cont!r} tokenizes to nothing")
        for j, token in enumerate(tail):
            rows.append(i)
            positions.append(len(head) + j - 1)
            targets.append(token)
        seqs.append(head + tail)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    batch = Encoded(ids, mask, mask.sum(1) - 1)
    out = Continuations(batch, torch.tensor(rows), torch.tensor(positions), torch.tensor(targets))
    return out.to(device) if device is not None else out


def scored_hidden_plain(model: nn.Module, enc: Continuations) -> torch.Tensor:
    """Hidden states [M, d] at the positions that predict a continuation token: one plain forward."""
    out = model.base_model(input_ids=enc.batch.input_ids, attention_mask=enc.batch.attention_mask, use_cache=False)
    return out.last_hidden_state[enc.rows, enc.positions]


def scored_hidden_shared(model: nn.Module, enc: Continuations, min_prefix: int | None = None) -> torch.Tensor:
    """Same as :func:`scored_hidden_plain`, running the batch's common prefix once, each distinct
    prompt once on top of it, and only then each continuation on top of its own prompt."""
    min_prefix = MIN_PREFIX if min_prefix is None else min_prefix
    batch, rows, positions = enc.batch, enc.rows.cpu(), enc.positions.cpu()
    ids, mask = batch.input_ids, batch.attention_mask
    B, device = len(batch), ids.device
    head = torch.full((B,), ids.shape[1]).scatter_reduce(0, rows, positions + 1, "amin")  # prompt lengths
    tail = mask.sum(1).cpu() - head
    P = min(shared_prefix_length(batch), int(positions.min()))
    P = P if P >= min_prefix else 0
    distinct: dict[tuple[int, ...], int] = {}
    owner = torch.tensor([distinct.setdefault(tuple(ids[i, :head[i]].tolist()), len(distinct)) for i in range(B)])
    H, C = int(head.max()), int(tail.max()) - 1  # the last continuation token predicts nothing that is scored
    window = getattr(model.config, "sliding_window", None)
    # prompts of different lengths leave gaps in the cache; a sliding window counts cache slots, not positions
    reuse = len(distinct) < B and (not window or H + C <= window)
    prefix = PrefixKV.run(model, ids[:1, :P], mask[:1, :P]) if P else None
    if not reuse:
        if prefix is None:
            return scored_hidden_plain(model, enc)
        h = forward_suffix(model, prefix, torch.zeros(B, dtype=torch.long), ids[:, P:], mask)
        return h[rows.to(device), (positions - P).to(device)]

    first_row = torch.tensor([owner.tolist().index(u) for u in range(len(distinct))])
    head_ids, head_mask = ids[first_row, :H].clone(), (torch.arange(H) < head[first_row, None]).long().to(device)
    head_ids[head_mask == 0] = 0
    h_prompt, prompt_kv = run_recorded(model, head_ids[:, P:], head_mask, prefix,
                                       torch.zeros(len(distinct), dtype=torch.long))
    out = torch.empty(len(rows), h_prompt.shape[-1], dtype=h_prompt.dtype, device=device)
    first = positions == head[rows] - 1  # predicts the first continuation token: read from the prompt pass
    out[first.to(device)] = h_prompt[owner[rows[first]].to(device), (positions[first] - P).to(device)]
    if C > 0:
        offsets = torch.arange(C)
        take = (head[:, None] + offsets).clamp(max=ids.shape[1] - 1)
        tail_ids = ids.gather(1, take.to(device))
        tail_mask = (offsets < tail[:, None] - 1).long().to(device)
        tail_ids[tail_mask == 0] = 0
        h_tail = forward_suffix(model, prompt_kv, owner, tail_ids, torch.cat([head_mask[owner.to(device)], tail_mask], 1),
                                (head[:, None] + offsets).to(device))
        later = ~first
        out[later.to(device)] = h_tail[rows[later].to(device), (positions[later] - head[rows[later]]).to(device)]
    return out


@torch.no_grad()
def continuation_logprobs(model: nn.Module, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                          device=None, shared: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each continuation after its prompt, and its token count: [P], [P].
    Full-vocabulary logits are computed only at the positions that predict a continuation token.
    With ``shared`` each prompt runs once for all of its continuations (:func:`scored_hidden_shared`)."""
    enc = encode_continuations(tokenizer, prompts, continuations, device)
    hidden = scored_hidden_shared(model, enc) if shared else scored_hidden_plain(model, enc)
    logp = unembed(model, hidden).float().log_softmax(-1)
    token_logp = logp[torch.arange(len(enc.targets), device=logp.device), enc.targets].cpu()
    owner = enc.rows.cpu()
    total = torch.zeros(len(prompts)).index_add_(0, owner, token_logp)
    count = torch.zeros(len(prompts)).index_add_(0, owner, torch.ones_like(token_logp))
    return total, count
