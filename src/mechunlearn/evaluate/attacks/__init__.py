"""Attacks that try to bring an edited or forgotten fact back; each leaves the evaluated model
unchanged (relearning trains a deep copy; probes and soft prompts only read activations).
Every attack is registered in ``ATTACKS`` (``registry.py``; the built-ins in ``catalog.py``,
imported here so that they are registered). The other names below are imported on first use
(``mechunlearn._lazy``); the registry and the configs need no torch."""

from mechunlearn._lazy import exports_of, lazy_package
from mechunlearn.evaluate.attacks import catalog  # noqa: F401  (registration)

lazy_package(__name__, exports_of(
    ("mechunlearn.evaluate.attacks.registry", ("ATTACKS", "Attack", "get_attack", "register")),
    ("mechunlearn.evaluate.attacks.common", ("attack_halves",)),
    ("mechunlearn.evaluate.attacks.catalog", ("ProbeConfig", "RelearnConfig", "SoftPromptConfig")),
    ("mechunlearn.evaluate.attacks.probe", ("probe_attack",)),
    ("mechunlearn.evaluate.attacks.relearn", ("relearn",)),
    ("mechunlearn.evaluate.attacks.softprompt", ("softprompt_attack",)),
))

__all__ = ["ATTACKS", "Attack", "ProbeConfig", "RelearnConfig", "SoftPromptConfig", "attack_halves", "get_attack",
           "probe_attack", "register", "relearn", "softprompt_attack"]
