"""Loss terms, one small file each. Fact objectives register themselves by name."""

from mechunlearn.edit.objectives import edit, grad_ascent, log1m, maintain, npo  # noqa: F401  (registration)
from mechunlearn.edit.objectives.base import (
    OBJECTIVES,
    FactLogits,
    FactObjective,
    forget_objectives,
    get_objective,
    register,
)
from mechunlearn.edit.objectives.lm import general_lm_loss

__all__ = [
    "OBJECTIVES", "FactLogits", "FactObjective", "forget_objectives", "general_lm_loss", "get_objective", "register",
]
