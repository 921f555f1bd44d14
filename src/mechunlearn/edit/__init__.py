"""Localized editing and unlearning: train only the selected components (whole matrices,
heads or neurons), save the edit as an HF checkpoint plus a small diff, rebuild it from the base.

The names below are imported on first use (``mechunlearn._lazy``): ``EditConfig`` needs no torch."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.edit.config", ("EditConfig",)),
    ("mechunlearn.edit.objectives", ("OBJECTIVES", "forget_objectives", "get_objective")),
    ("mechunlearn.edit.saving", ("apply_diff", "read_diff", "save_edit", "train_log", "weights_hash", "write_diff")),
    ("mechunlearn.edit.selection", ("TrainableWeights", "expand_components", "merge_slices")),
    ("mechunlearn.edit.target", ("forget_strength", "strength_measure")),
    ("mechunlearn.edit.trainer", ("TrainResult", "train", "train_sequential")),
))

__all__ = [
    "OBJECTIVES", "EditConfig", "TrainResult", "TrainableWeights", "apply_diff", "expand_components",
    "forget_objectives", "forget_strength", "get_objective", "merge_slices", "read_diff", "save_edit",
    "strength_measure", "train", "train_log", "train_sequential", "weights_hash", "write_diff",
]
