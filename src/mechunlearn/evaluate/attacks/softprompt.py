"""Soft-prompt attack: one learned vector added to the input embedding (``hook_embed``) of every
token of every prompt, bounded in L2 norm, trained to bring back the TRUE answer on one half of
the edited facts and evaluated on the other half.

We chose an additive universal perturbation rather than a learned prefix: it needs no change
to the prompt (the evaluation formats stay exactly as without the attack) and its strength has
one readable knob. The bound is relative: ``max_norm_ratio`` times the mean L2 norm of the
input embeddings of the training prompts' tokens. The perturbation is parametrised as
``bound * v`` with ``||v|| <= 1`` (projected after every Adam step), starting from a seeded
random direction of norm ``init_scale``; the loss is the cross-entropy of the true answer at the
last token (over the answer set for closed relations, the full vocabulary otherwise). The
result is the mean over ``restarts`` seeded runs. A random perturbation at the full bound is
reported as a control. The default bound, 0.1 (on Gemma 3 270M: norm ~2.6 against ~26 per
token), leaves the model's answers roughly as they are under a random direction; at 0.5 a
random direction alone already wrecks the 270M model's answers (P(true) 0.85 -> 0.28), so
larger bounds measure damage, not recall. The model's weights are never touched (gradients are taken with
respect to the perturbation only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mechunlearn.evaluate.attacks.catalog import SoftPromptConfig
from mechunlearn.evaluate.attacks.common import answer_columns, attack_halves, true_token_ids
from mechunlearn.evaluate.metrics import evaluate_facts
from mechunlearn.facts import FactSet, Split
from mechunlearn.models.encoding import encode
from mechunlearn.models.hooks import cache_activations, hooks
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import unembed


@contextmanager
def perturb_embeddings(model, delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` ([d_model]) to the input embedding of every token inside the block."""

    def add(act, _point):
        return act + delta.to(act.dtype)

    with hooks(model, [("hook_embed", add)]):
        yield


def mean_embedding_norm(lm: LoadedModel, prompts: list[str]) -> float:
    batch = encode(lm.tokenizer, prompts, device=lm.device)
    with torch.no_grad(), cache_activations(lm.model, ["hook_embed"]) as cache:
        lm.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    norms = cache["hook_embed"].float().norm(dim=-1)
    return float(norms[batch.attention_mask.bool()].mean())


def _loss_fn(lm: LoadedModel, facts: FactSet):
    batch = encode(lm.tokenizer, [f.prompt for f in facts], device=lm.device)
    if facts.closed:
        ids, targets = answer_columns(lm.tokenizer, facts)
    else:
        ids, targets = None, true_token_ids(lm.tokenizer, facts)
    targets = targets.to(lm.device)

    def loss() -> torch.Tensor:  # the perturbation reaches the shared prefix's tokens too (hook_embed runs in both calls)
        return F.cross_entropy(unembed(lm.model, final_hidden_shared(lm.model, batch), ids).float(), targets)

    return loss


def _p_true(lm: LoadedModel, facts: FactSet, delta: torch.Tensor | None, formats, seed: int) -> dict[str, float]:
    if delta is None:
        aggs = evaluate_facts(lm, facts, formats, seed=seed).aggregates()
    else:
        with perturb_embeddings(lm.model, delta):
            aggs = evaluate_facts(lm, facts, formats, seed=seed).aggregates()
    return {fmt: a["p_true"] for fmt, a in aggs.items()}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _std(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def softprompt_attack(lm: LoadedModel, split: Split, config: SoftPromptConfig | None = None,
                      progress: bool = False) -> dict:
    """Learn bounded universal embedding perturbations toward the truth on half of the edited
    facts; report P(true) on the other half (mean over seeded restarts), before and after."""
    config = config or SoftPromptConfig()
    start = time.perf_counter()
    train, held_out, rule = attack_halves(split, config.seed)
    formats = tuple(config.eval_formats)
    bound = config.max_norm_ratio * mean_embedding_norm(lm, [f.prompt for f in train])
    loss_fn = _loss_fn(lm, train)
    d_model = lm.arch.d_model
    runs = []
    for r in tqdm(range(config.restarts), desc="soft prompts", disable=not progress, leave=False):
        g = torch.Generator().manual_seed(config.seed * 1000 + r)
        v0 = torch.randn(d_model, generator=g)
        v = (v0 / v0.norm() * config.init_scale).to(lm.device).requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=config.lr)
        losses = []
        for _ in range(config.steps):
            with torch.enable_grad(), perturb_embeddings(lm.model, bound * v):
                loss = loss_fn()
                (grad,) = torch.autograd.grad(loss, [v])
            v.grad = grad
            optimizer.step()
            with torch.no_grad():
                v.mul_(min(1.0, 1.0 / max(float(v.norm()), 1e-12)))
            losses.append(loss.item())
        delta = (bound * v).detach()
        runs.append({
            "restart": r,
            "norm": float(delta.norm()),
            "losses": losses,
            "train_p_true": _p_true(lm, train, delta, formats, config.seed),
            "eval_p_true": _p_true(lm, held_out, delta, formats, config.seed),
        })
    g = torch.Generator().manual_seed(config.seed * 1000 + 999)
    random_dir = torch.randn(d_model, generator=g)
    random_delta = (random_dir / random_dir.norm() * bound).to(lm.device)
    before = _p_true(lm, held_out, None, formats, config.seed)
    after = {fmt: _mean([run["eval_p_true"][fmt] for run in runs]) for fmt in formats}
    return {
        "config": asdict(config),
        "bound": bound,
        "halves": rule,
        "train_facts": [f.id for f in train],
        "eval_facts": [f.id for f in held_out],
        "p_true_before": before,
        "p_true_after": after,
        "p_true_after_std": {fmt: _std([run["eval_p_true"][fmt] for run in runs]) for fmt in formats},
        "p_true_random": _p_true(lm, held_out, random_delta, formats, config.seed),
        "restarts": runs,
        "seconds": time.perf_counter() - start,
    }
