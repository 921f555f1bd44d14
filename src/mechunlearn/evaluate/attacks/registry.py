"""The attack registry: each evaluation attack declares itself once (``register``), and the
evaluation's config, its run, its headline numbers and curves, the report and the run's memory
estimate read ``ATTACKS``. Importable without torch: a function that needs torch is bound by its
``"module:function"`` name (``bind``) and imported on its first call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechunlearn.evaluate.metric import Metric
from mechunlearn.registry import Registry

if TYPE_CHECKING:
    from mechunlearn.models.memory import Stage


def no_curves(result: dict) -> dict[str, list[list[float]]]:
    return {}


def no_cost(shape, config, n_forget: int, tokens: int, copies: int) -> Stage | None:
    return None


@dataclass(frozen=True)
class CurvePlot:
    """One of an attack's curves as the report plots it (each method's mean over the seeds)."""

    curve: str  # a name its ``curves`` function gives
    file: str  # the plot is report/{file}_{setting}.png
    title: str
    xlabel: str
    ylabel: str


@dataclass(frozen=True)
class Attack:
    # the key in ``EvalConfig.attacks``, in the results' "attacks" and "seeds", and the name of
    # its section of ``EvalConfig``
    name: str
    config: type  # a dataclass of its settings, with a ``seed`` (a top-level evaluation seed sets it)
    run: Callable[..., dict]  # (lm, split, config, progress) -> its JSON-able result
    stage: str | None  # the profiling stage it runs under; None: it marks its own stages
    metrics: tuple[Metric, ...]  # its headline metrics, in the report's order
    headline: Callable[[dict], dict[str, float | None]]  # its result -> flat aggregates (its metrics among them)
    curves: Callable[[dict], dict[str, list[list[float]]]] = no_curves  # its result -> named (x, y) curves
    # (model shape, its config, forget facts, prompt tokens, model copies) -> the memory stage of one
    # attack on one model (its passes are multiplied by the models attacked), or None: no stage of its own
    cost: Callable[..., Stage | None] = no_cost
    attacks_unedited: bool = True  # False: the unedited model is not attacked
    plots: tuple[CurvePlot, ...] = ()  # the curves the report draws per setting


# in the order every evaluation runs them, and every result lists them
ATTACKS: Registry[Attack] = Registry("attack")
register = ATTACKS.register
get_attack = ATTACKS.find
