"""Attacks that try to bring an edited or forgotten fact back; each leaves the evaluated model
unchanged (relearning trains a deep copy; probes and soft prompts only read activations).
The names below are imported on first use (``mechunlearn._lazy``); the configs need no torch."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.evaluate.attacks.common", ("attack_halves",)),
    ("mechunlearn.evaluate.config", ("ProbeConfig", "RelearnConfig", "SoftPromptConfig")),
    ("mechunlearn.evaluate.attacks.probe", ("probe_attack",)),
    ("mechunlearn.evaluate.attacks.relearn", ("relearn",)),
    ("mechunlearn.evaluate.attacks.softprompt", ("softprompt_attack",)),
))

__all__ = ["ProbeConfig", "RelearnConfig", "SoftPromptConfig", "attack_halves", "probe_attack", "relearn",
           "softprompt_attack"]
