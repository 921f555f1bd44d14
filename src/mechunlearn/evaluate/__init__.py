"""Evaluate any model (edited or not) on fact sets: prompt formats, side effects and attacks.
The names below are imported on first use (``mechunlearn._lazy``); the configs
(``evaluate/config.py``) need no torch."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.evaluate.config", ("EvalConfig",)),
    ("mechunlearn.evaluate.attacks.registry", ("ATTACKS",)),
    ("mechunlearn.evaluate.attacks.catalog", ("ProbeConfig", "RelearnConfig", "SoftPromptConfig")),
    ("mechunlearn.evaluate.attacks", ("attack_halves", "probe_attack", "relearn", "softprompt_attack")),
    ("mechunlearn.evaluate.formats", ("FORMATS", "build_format", "option_order")),
    ("mechunlearn.evaluate.lm_loss", ("lm_loss",)),
    ("mechunlearn.evaluate.metrics", ("FactRow", "FormatResults", "evaluate_facts")),
    ("mechunlearn.evaluate.mmlu", ("load_mmlu", "mmlu_eval")),
    ("mechunlearn.evaluate.run", ("compare_runs", "evaluate_run", "write_results")),
    ("mechunlearn.evaluate.side_effects", ("side_effects",)),
))

__all__ = [
    "ATTACKS", "FORMATS", "EvalConfig", "FactRow", "FormatResults", "ProbeConfig", "RelearnConfig",
    "SoftPromptConfig", "attack_halves", "build_format", "compare_runs", "evaluate_facts", "evaluate_run",
    "lm_loss", "load_mmlu", "mmlu_eval", "option_order", "probe_attack", "relearn", "side_effects",
    "softprompt_attack", "write_results",
]
