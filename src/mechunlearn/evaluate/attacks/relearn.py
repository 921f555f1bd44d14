"""Relearning attack: fine-tune a copy of the model on half of the edited facts toward their
TRUE answers (plus maintain facts and general text) and watch P(true) come back on the other
half. "Relearning error" = 1 - P(true) on the held-out half; a robust edit keeps it high.

Each step trains on one fixed batch: the training half of the edited facts, ``n_maintain``
seeded maintain-train facts and ``n_general`` seeded windows of general text. The loss is the
full-vocabulary cross-entropy of the true answer's first token at the last prompt token (mean
over the edited facts) + the same over the maintain facts + next-token cross-entropy on the
general text. LoRA (peft, on all linear layers of the blocks) or full fine-tuning of every
weight; AdamW without weight decay, constant learning rate, gradient-norm clip 1.0."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mechunlearn.edit.objectives.lm import lm_hidden, window_losses
from mechunlearn.errors import MechunlearnError, TrainingDivergedError
from mechunlearn.evaluate.attacks.catalog import RelearnConfig
from mechunlearn.evaluate.attacks.common import attack_halves, model_copy, seeded, true_token_ids
from mechunlearn.evaluate.metrics import FormatResults, evaluate_facts
from mechunlearn.facts import FactSet, Split
from mechunlearn.facts.general_text import general_windows
from mechunlearn.models.encoding import Encoded, encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.precision import check_cpu_bf16, frozen_bf16, step_autocast
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import unembed_together
from mechunlearn.profiling import stage


def _trainable(model, config: RelearnConfig) -> list[torch.nn.Parameter]:
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules="all-linear", lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2 Conv1D: peft switches fan_in_fan_out itself and warns
        inject_adapter_in_model(lora, model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    if not params:
        raise MechunlearnError("LoRA found no linear layers to adapt in this model")
    return params


@dataclass
class RelearnLoss:
    """The loss of one relearning step on its fixed batch: the first ``n_train`` prompts are the
    edited facts, the rest maintain facts. Their shared prefix runs once; the vocabulary is read
    only at each prompt's last token and at the general text's positions, in one pass."""

    batch: Encoded
    targets: torch.Tensor  # [B] true answer's first token
    n_train: int
    windows: torch.Tensor | None  # [n_general, T] general text, or None

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        parts = [(final_hidden_shared(model, self.batch), None)]
        if self.windows is not None:
            hidden, labels = lm_hidden(model, self.windows)
            parts.append((hidden.reshape(-1, hidden.shape[-1]), None))
        logits = unembed_together(model, parts)  # one pass over the vocabulary matrix
        per_fact = F.cross_entropy(logits[0].float(), self.targets, reduction="none")
        loss = per_fact[: self.n_train].mean()
        if len(per_fact) > self.n_train:
            loss = loss + per_fact[self.n_train:].mean()
        if self.windows is not None:
            loss = loss + window_losses(logits[1], labels).mean()
        return loss


def _curve_point(lm: LoadedModel, held_out: FactSet, step: int, formats, seed: int) -> tuple[dict, FormatResults]:
    with stage("relearning evaluation"):
        results = evaluate_facts(lm, held_out, formats, seed=seed)
    aggs = results.aggregates()
    point = {"step": step}
    for fmt, a in aggs.items():
        prefix = "" if fmt == formats[0] else f"{fmt}."
        point[f"{prefix}p_true"] = a["p_true"]
        point[f"{prefix}p_new"] = a["p_new"]
        point[f"{prefix}accuracy"] = a["accuracy"]
        point[f"{prefix}relearning_error"] = None if a["p_true"] is None else 1 - a["p_true"]
    return point, results


def relearn(lm: LoadedModel, split: Split, config: RelearnConfig | None = None, progress: bool = False) -> dict:
    """Relearn the truth on one half of the edited facts (a copy of the model is trained) and
    report the curve of P(true) on the other half after every ``eval_every`` steps. With
    ``folds=2`` a second copy relearns the other half, and every number is the mean over all the
    edited facts, each scored by the attack that did not train on it."""
    config = config or RelearnConfig()
    if config.cpu_bf16:
        check_cpu_bf16(lm.device)
    start = time.perf_counter()
    train, held_out, rule = attack_halves(split, config.seed)
    if config.folds == 2 and {f.id for f in train} - {f.id for f in split.forget_eval}:
        raise MechunlearnError("relearning folds: 2 swaps the halves of facts that were edited and evaluated; "
                               "this edit is evaluated on held-out facts it never trained on: use folds: 1")
    folds = [_relearn_fold(lm, split, train, held_out, config, progress)]
    if config.folds == 2:
        folds.append(_relearn_fold(lm, split, held_out, train, config, progress))
        rule += "; then the halves swapped, so that every edited fact is scored once"
    fold = folds[0] if len(folds) == 1 else _pooled(folds, config.eval_formats)
    curve = fold["curve"]
    return {
        "config": {**asdict(config), "learning_rate": config.learning_rate},
        "halves": rule,
        "train_facts": fold["train_facts"],
        "eval_facts": fold["eval_facts"],
        "maintain_facts": fold["maintain_facts"],
        "curve": curve,
        "losses": fold["losses"],
        "p_true_before": curve[0]["p_true"],
        "p_true_after": curve[-1]["p_true"],
        "relearning_error": curve[-1]["relearning_error"],
        "train_p_true_after": fold["train_p_true_after"],  # did the attack fit the facts it trained on?
        "rows": fold["rows"],
        "seconds": time.perf_counter() - start,
        **({"folds": [{k: f[k] for k in ("train_facts", "eval_facts", "curve", "losses")} for f in folds]}
           if len(folds) > 1 else {}),
    }


ROW_FIELD = {"p_true": "p_true", "relearning_error": "p_true", "p_new": "p_new", "accuracy": "correct"}


def _pooled(folds: list[dict], formats: tuple[str, ...]) -> dict:
    """Folds as one attack: every curve value and the fit are means over the facts of all folds
    (each fold's mean weighted by the facts it averages)."""
    def mean(values_weights):
        pairs = [(v, w) for v, w in values_weights if v is not None and w]
        return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None

    def point(i: int, key: str):
        fmt, _, name = key.rpartition(".")
        fmt = fmt or formats[0]
        return mean((f["curve"][i][key], sum(r["format"] == fmt and r[ROW_FIELD[name]] is not None for r in f["rows"]))
                    for f in folds)

    curve = [{key: p0[key] if key == "step" else point(i, key) for key in p0} for i, p0 in enumerate(folds[0]["curve"])]
    return {"train_facts": [i for f in folds for i in f["train_facts"]],
            "eval_facts": [i for f in folds for i in f["eval_facts"]],
            "maintain_facts": folds[0]["maintain_facts"], "curve": curve,
            "losses": [sum(step) / len(step) for step in zip(*(f["losses"] for f in folds), strict=True)],
            "train_p_true_after": mean((f["train_p_true_after"], len(f["train_facts"])) for f in folds),
            "rows": [r for f in folds for r in f["rows"]]}


def _relearn_fold(lm: LoadedModel, split: Split, train: FactSet, held_out: FactSet, config: RelearnConfig,
                  progress: bool) -> dict:
    """A copy of the model relearns ``train`` (with maintain facts and general text); the curve of
    P(true) on ``held_out``."""
    with seeded(config.seed):
        maintain_order = torch.randperm(len(split.maintain_train)).tolist()[: config.n_maintain]
    maintain = [split.maintain_train.facts[i] for i in maintain_order]
    tok = lm.tokenizer
    with stage("relearning setup"):
        attacked = model_copy(lm)
    model = attacked.model
    device = attacked.device

    facts = list(train) + maintain
    batch = encode(tok, [f.prompt for f in facts], device=device)
    targets = true_token_ids(tok, train.subset(facts)).to(device)
    n_train = len(train)
    windows = (general_windows(tok, config.general_text, config.general_length, config.n_general, config.seed,
                               part="train").to(device)
               if config.n_general else None)

    loss_fn = RelearnLoss(batch, targets, n_train, windows)
    with seeded(config.seed), stage("relearning setup"):
        params = _trainable(model, config)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    frozen = frozen_bf16(model, device, config.cpu_bf16)
    formats = tuple(config.eval_formats)
    point, results = _curve_point(attacked, held_out, 0, formats, config.seed)
    curve = [point]
    losses = []
    for step in tqdm(range(1, config.steps + 1), desc=f"relearn ({config.method})", disable=not progress, leave=False):
        with stage("relearning step"):
            optimizer.zero_grad(set_to_none=True)
            with step_autocast(device, cuda_bf16=False, cpu_bf16=config.cpu_bf16, frozen=frozen):
                loss = loss_fn(model)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"relearning loss became {loss.item()} at step {step}; lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            point, results = _curve_point(attacked, held_out, step, formats, config.seed)
            curve.append(point)
    with stage("relearning evaluation"):
        fitted = evaluate_facts(attacked, train, formats[:1], seed=config.seed).aggregates()[formats[0]]
    del attacked, model, optimizer, params
    return {"train_facts": [f.id for f in train], "eval_facts": [f.id for f in held_out],
            "maintain_facts": [f.id for f in maintain], "curve": curve, "losses": losses,
            "train_p_true_after": fitted["p_true"], "rows": results.to_json()["rows"]}

