"""The localized trainer: fine-tune only the selected components, in place.

It knows nothing about how the components were chosen. One step:
``c_forget * forget term + c_maintain * maintain term + c_general * general-text LM term``,
AdamW, cosine schedule (optional linear warm-up), grad-norm clipping, gradient accumulation,
seeded batches; bf16 autocast on CUDA, and on a CPU with native bf16 when ``cpu_bf16`` asks (else fp32). The fact terms read the vocabulary only at
each prompt's last token. Dropout stays off (the model is kept in eval mode) so a run is a
deterministic function of its seed. With ``config.target`` the run stops at the first check where
the forget strength reaches it, and with ``config.target_band`` an overshoot is walked back into
the band (edit/target.py); the cosine schedule spans the cap either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.data import FactTerm, StepSampler, fact_term
from mechunlearn.edit.objectives import get_objective
from mechunlearn.edit.parallel import DataParallel
from mechunlearn.edit.saving import weights_hash
from mechunlearn.edit.selection import TrainableWeights, expand_components
from mechunlearn.edit.step import TERMS, LossTerms, fact_logits
from mechunlearn.edit.target import TargetTracker
from mechunlearn.errors import MechunlearnError, TrainingDivergedError
from mechunlearn.facts import Split
from mechunlearn.facts.general_text import general_windows
from mechunlearn.models.components import ParamSlice
from mechunlearn.models.encoding import encode
from mechunlearn.models.loading import LoadedModel
from mechunlearn.models.precision import check_cpu_bf16, frozen_bf16, step_autocast
from mechunlearn.models.prefix import final_hidden_shared
from mechunlearn.models.scoring import batched, unembed
from mechunlearn.profiling import stage


@dataclass
class TrainResult:
    components: list[str]
    n_trained_params: int
    history: list[dict[str, float]]  # per step: each loss term (unweighted mean), total loss, grad norm, lr
    seconds: float
    config: EditConfig
    slices: list[ParamSlice]  # the parameter slices trained (what a diff stores)
    base_hash: str  # hash of the model's weights before this edit (or before the first of a sequence)
    split: dict | None = None
    optimizer_state_numel: int = 0  # AdamW exp_avg + exp_avg_sq entries
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    target: dict | None = None  # with config.target: target, measure, reached, steps, strength, checks


def _lr_lambda(steps: int, warmup: int):
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / (warmup + 1)
        progress = (t - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def _reference_logp(lm: LoadedModel, term: FactTerm, config: EditConfig) -> torch.Tensor:
    out = []
    for rows in batched(len(term), config.forget_batch_size):
        idx = list(range(rows.start, rows.stop))
        batch = encode(lm.tokenizer, term.prompts[rows], device=lm.device)
        with step_autocast(lm.device, config.autocast, config.cpu_bf16):
            logits = unembed(lm.model, final_hidden_shared(lm.model, batch), term.columns)
        out.append(fact_logits(logits, term, idx).target_logp().float().cpu())
    return torch.cat(out)


# divergence: a trained weight this many times its starting magnitude (at least 1), or a term the
# training minimises (maintain, general text) this many times the loss of a uniform guess
WEIGHT_BLOWUP, LOSS_BLOWUP = 1e3, 10.0


def _check_outputs(lm: LoadedModel, facts, step: int, config: EditConfig) -> None:
    """The trained model's answer probabilities on ``facts`` are numbers."""
    from mechunlearn.facts import answer_probs

    p_true, _ = answer_probs(lm.model, lm.tokenizer, facts)
    if not torch.isfinite(p_true).all():
        raise _diverged(step, config, "the model's output on the forget prompts is NaN after the last step")


def _diverged(step: int, config: EditConfig, what: str) -> TrainingDivergedError:
    return TrainingDivergedError(f"step {step + 1}/{config.steps}: {what}; the model's weights were restored "
                                 "and nothing was written")


def _optimizer_state_numel(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() for s in optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))


def train(
    lm: LoadedModel,
    components: Sequence[str] | str,
    split: Split,
    config: EditConfig | None = None,
    progress: bool = True,
    accelerator=None,
    base_hash: str | None = None,
) -> TrainResult:
    """Edit or unlearn ``split.forget`` by training only ``components`` of ``lm.model`` in place.
    On any failure (e.g. a diverging loss) the model's weights are restored before raising."""
    config = (config or EditConfig()).validate().resolved(split.forget.closed)
    started = time.perf_counter()
    model, tok, device = lm.model, lm.tokenizer, lm.device
    if config.cpu_bf16:
        check_cpu_bf16(device)
    arch = lm.arch
    names = expand_components(arch, components)
    parallel = DataParallel(accelerator)
    if accelerator is not None and torch.device(accelerator.device).type != device.type:
        raise MechunlearnError(f"the model is on {device} but the accelerator runs on {accelerator.device}")

    objective, maintain = get_objective(config.objective), get_objective("maintain")
    forget = fact_term(tok, split.forget, objective.answer, config.forget_over)
    keep = fact_term(tok, split.maintain_train, maintain.answer, "vocab")
    windows = (general_windows(tok, config.general_text, config.general_length, part="train")
               if config.c_general > 0 else None)
    if objective.needs_reference:
        with stage("training setup"):
            forget.reference = _reference_logp(lm, forget, config)
    base_hash = base_hash or weights_hash(model)

    weights = TrainableWeights(model, [arch.component(n) for n in names], mask=config.weight_mask)
    optimizer = torch.optim.AdamW(weights.tensors, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.steps, config.warmup))
    generator = torch.Generator().manual_seed(config.seed)
    samplers = {
        "forget": StepSampler(len(forget), config.forget_batch_size, generator),
        "maintain": StepSampler(len(keep), config.maintain_batch_size, generator),
        "general": StepSampler(len(windows), config.general_batch_size, generator) if windows is not None else None,
    }
    terms = LossTerms(model, tok, config, objective, maintain, forget, keep, windows)
    coef = terms.coef
    tracker = TargetTracker(lm, split.forget, objective.answer, config, parallel) if config.target else None

    explodes = LOSS_BLOWUP * math.log(model.get_output_embeddings().weight.shape[0])
    history: list[dict[str, float]] = []
    was_training = model.training
    model.eval()
    weights.activate()
    terms.frozen = frozen_bf16(model, device, config.cpu_bf16)
    if tracker is not None:
        tracker.start(weights)
    bar = tqdm(range(config.steps), desc=config.objective, disable=not (progress and parallel.is_main))
    folds = tracker is not None and tracker.folds()
    try:
        for step in bar:
            stop_if = None
            if folds and step > 0 and tracker.due(step):  # the check after `step` steps, on this step's forward
                def stop_if(hidden, rows, done=step):
                    with stage("target check"):
                        return tracker.check(done, weights, tracker.strength_of(hidden, rows))
            drawn = {k: (s.next() if s is not None else []) for k, s in samplers.items()}
            with stage("training step: forward and backward"):
                sums = terms.backward(drawn, parallel.rank, parallel.world, stop_if)
            if sums is None:
                break
            with stage("training step: update"):
                weights.collect_grads()
                parallel.sum_([sums, *[t.grad for t in weights.tensors]])
                means = {k: float(sums[i]) / max(1, len(drawn[k])) for i, k in enumerate(TERMS)
                         if drawn[k] and coef[k] > 0}
                for term, value in means.items():
                    if not math.isfinite(value) or (term != "forget" and value > explodes):
                        raise _diverged(step, config, f"the {term} loss is {value:.4g} (lr {schedule.get_last_lr()[0]:.3g})")
                entry = {"step": step + 1, **means}
                entry["loss"] = sum(coef[k] * v for k, v in means.items())
                if config.weight_mask:
                    penalty = weights.mask_penalty()
                    (config.mask_l1 * penalty).backward()
                    entry["mask_l1"] = float(penalty.detach())
                    entry["loss"] += config.mask_l1 * entry["mask_l1"]
                max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
                norm = float(torch.nn.utils.clip_grad_norm_(weights.tensors, max_norm))
                if not math.isfinite(norm):
                    raise _diverged(step, config, f"the gradient norm is {norm}")
                entry["grad_norm"] = norm
                entry["lr"] = schedule.get_last_lr()[0]
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                weights.after_step()
                blown = weights.blown_up(WEIGHT_BLOWUP)
                if blown is not None:
                    raise _diverged(step, config, f"the weights diverged: {blown} (lr {entry['lr']:.3g})")
                entry.update(weights.mask_stats())
            history.append(entry)
            bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k in (*TERMS, "mask_l1")})
            last = step + 1 == config.steps
            if tracker is not None and tracker.due(step + 1) and (last or not folds):
                with stage("target check"):
                    reached = tracker.check(step + 1, weights)
                if reached:
                    break
        binarize = config.weight_mask and config.mask_threshold is not None
        if binarize:
            weights.binarize_masks(config.mask_threshold)
        if tracker is None:  # a tracker's last check measured the final weights
            _check_outputs(lm, split.forget, len(history) - 1, config)
        target = tracker.record(len(history), remeasure=binarize) if tracker is not None else None
    except BaseException:
        weights.restore_original()
        raise
    finally:
        weights.deactivate()
        model.train(was_training)
        bar.close()
    notes = []
    if config.weight_mask:
        notes.append("weight-mask variant: W = W0 * M" + (f", M binarized at {config.mask_threshold}"
                                                          if config.mask_threshold is not None else ", M soft"))
    return TrainResult(
        components=names,
        n_trained_params=weights.n_params,
        history=history,
        seconds=time.perf_counter() - started,
        config=config,
        slices=weights.slices,
        base_hash=base_hash,
        split=split.to_json(),
        optimizer_state_numel=_optimizer_state_numel(optimizer),
        world_size=parallel.world,
        notes=notes,
        target=target,
    )


def train_sequential(
    lm: LoadedModel,
    components: Sequence[str] | str,
    blocks: Sequence[Split],
    config: EditConfig | None = None,
    progress: bool = True,
    accelerator=None,
) -> list[TrainResult]:
    """Edit several blocks of facts one after another (each block one full training run on
    the model the previous block left). Every result records the hash of the original base."""
    if not blocks:
        raise MechunlearnError("sequential editing needs at least one block of facts")
    base_hash = weights_hash(lm.model)
    return [train(lm, components, block, config, progress, accelerator, base_hash) for block in blocks]
