"""Localized editing and unlearning: train only the selected components (whole matrices,
heads or neurons), save the edit as an HF checkpoint plus a small diff, rebuild it from the base."""

from mechunlearn.edit.config import EditConfig
from mechunlearn.edit.objectives import OBJECTIVES, forget_objectives, get_objective
from mechunlearn.edit.saving import (
    apply_diff,
    read_diff,
    save_edit,
    train_log,
    weights_hash,
    write_diff,
)
from mechunlearn.edit.selection import TrainableWeights, expand_components, merge_slices
from mechunlearn.edit.target import forget_strength, strength_measure
from mechunlearn.edit.trainer import TrainResult, train, train_sequential

__all__ = [
    "OBJECTIVES", "EditConfig", "TrainResult", "TrainableWeights", "apply_diff", "expand_components",
    "forget_objectives", "forget_strength", "get_objective", "merge_slices", "read_diff", "save_edit",
    "strength_measure", "train", "train_log", "train_sequential", "weights_hash", "write_diff",
]
