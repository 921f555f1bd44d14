"""Evaluate any model (edited or not) on fact sets: prompt formats, side effects and attacks."""

from mechunlearn.evaluate.attacks import (
    ProbeConfig,
    RelearnConfig,
    SoftPromptConfig,
    attack_halves,
    probe_attack,
    relearn,
    softprompt_attack,
)
from mechunlearn.evaluate.formats import FORMATS, build_format, option_order
from mechunlearn.evaluate.lm_loss import lm_loss
from mechunlearn.evaluate.metrics import FactRow, FormatResults, evaluate_facts
from mechunlearn.evaluate.mmlu import load_mmlu, mmlu_eval
from mechunlearn.evaluate.run import ATTACKS, EvalConfig, compare_runs, evaluate_run, write_results
from mechunlearn.evaluate.side_effects import side_effects

__all__ = [
    "ATTACKS", "FORMATS", "EvalConfig", "FactRow", "FormatResults", "ProbeConfig", "RelearnConfig",
    "SoftPromptConfig", "attack_halves", "build_format", "compare_runs", "evaluate_facts", "evaluate_run",
    "lm_loss", "load_mmlu", "mmlu_eval", "option_order", "probe_attack", "relearn", "side_effects",
    "softprompt_attack", "write_results",
]
