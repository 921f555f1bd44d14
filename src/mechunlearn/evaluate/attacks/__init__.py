"""Attacks that try to bring an edited or forgotten fact back; each leaves the evaluated model
unchanged (relearning trains a deep copy; probes and soft prompts only read activations)."""

from mechunlearn.evaluate.attacks.common import attack_halves
from mechunlearn.evaluate.attacks.probe import ProbeConfig, probe_attack
from mechunlearn.evaluate.attacks.relearn import RelearnConfig, relearn
from mechunlearn.evaluate.attacks.softprompt import SoftPromptConfig, softprompt_attack

__all__ = ["ProbeConfig", "RelearnConfig", "SoftPromptConfig", "attack_halves", "probe_attack", "relearn",
           "softprompt_attack"]
