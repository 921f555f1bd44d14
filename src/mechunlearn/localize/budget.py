"""From scores to a set of trainable components at an exact parameter budget.

Candidates (``scores.candidates``: whole layers, matrices, heads or neurons) are ranked by
|score| (ties: lower layer, attention before MLP, q k v o in gate out, lower unit), then:

* ``under``: walk the ranking and take every candidate that still fits; never exceeds the
  budget (a smaller, lower-ranked candidate may fill what a large one could not).
* ``closest``: take candidates in rank order until the budget is reached or passed (the
  paper's rule); keep the last one only if that lands closer to the budget than stopping
  before it. May overshoot, by less than one candidate.
* ``within`` (a run's default): land within ``tolerance`` (a fraction, default 0.1: +-10%) of
  the budget. Walk the ranking and take every candidate that keeps the total at most
  budget x (1 + tolerance); stop at the first total of at least budget x (1 - tolerance), and
  take the next candidate that fits too if it lands nearer the budget (``closest``'s last step,
  inside the band). A large candidate that would overshoot is skipped and smaller, lower-ranked
  ones fill the rest.
  When no such walk lands inside at the requested granularity (whole layers of very different
  sizes), the next finer one is tried (layer -> matrix -> head -> neuron): matrices of
  different sizes mix where whole layers cannot. If none lands, the selection nearest the
  budget is kept and its note says by how much it misses (the report flags it).

Without a budget the method's own choice (``Localization.chosen``: FLU's layers, all MLPs...)
is used; a method that only ranks (causal tracing, attribution patching, random) then needs a
budget or a localization/selection to match (``match``: the paper compares every method at
FLU's parameter count). The selection records its exact parameter count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mechunlearn.errors import MechunlearnError
from mechunlearn.io import read_json, write_json_atomic
from mechunlearn.localize.base import Localization
from mechunlearn.localize.scores import GRANULARITIES, candidates

if TYPE_CHECKING:
    from mechunlearn.models.components import Architecture

RULES = ("under", "closest", "within")
BUDGET_TOLERANCE = 0.1  # ``within``: the selection lies within +-10% of the budget (BudgetSpec.tolerance)


@dataclass
class Selection:
    components: list[str]
    n_params: int
    budget: int
    rule: str
    granularity: str
    method: str
    note: str = ""
    model: dict = field(default_factory=dict)  # the model it was localized on (Localization.evidence["model"])
    tolerance: float | None = None  # rule ``within``: the fraction of the budget it may miss by

    def to_json(self) -> dict:
        return {"format": "mechunlearn.selection", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Selection:
        if data.get("format") != "mechunlearn.selection":
            raise MechunlearnError("not a selection JSON (missing format 'mechunlearn.selection')")
        return cls(**{k: data[k] for k in ("components", "n_params", "budget", "rule", "granularity", "method", "note",
                                                       "model", "tolerance")
                      if k in data})

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        return cls.from_json(_read(path))

    def check(self, arch: Architecture) -> Selection:
        """Raise unless every component exists in ``arch`` and the count matches."""
        n = sum(arch.component(c).n_params for c in self.components)
        if n != self.n_params:
            raise MechunlearnError(f"selection says {self.n_params} parameters but its components have {n} in this model")
        return self


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MechunlearnError(f"no such file: {path}")
    return read_json(path)


def _budget_of(match: Localization | Selection, arch: Architecture) -> int:
    if isinstance(match, Selection):
        return match.check(arch).n_params
    return select(match, arch).n_params


def check_tolerance(tolerance, what: str = "the budget tolerance") -> float:
    """A fraction of the budget in (0, 1): 0.1 lets a selection miss the budget by up to 10%."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance < 1:
        raise MechunlearnError(f"{what} is a fraction of the budget between 0 and 1 (0.1: within +-10%), "
                               f"got {tolerance!r}")
    return float(tolerance)


def select(loc: Localization, arch: Architecture, budget: int | None = None,
           match: Localization | Selection | None = None, granularity: str | None = None,
           rule: str = "under", tolerance: float = BUDGET_TOLERANCE) -> Selection:
    granularity = granularity or loc.evidence.get("granularity", "layer")
    model = loc.evidence.get("model") or {}
    if granularity not in GRANULARITIES:
        raise MechunlearnError(f"unknown granularity {granularity!r}: {GRANULARITIES}")
    if rule not in RULES:
        raise MechunlearnError(f"unknown budget rule {rule!r}: {RULES}")
    if rule == "within":
        check_tolerance(tolerance)
    note = ""
    if match is not None:
        if budget is not None:
            raise MechunlearnError("give a budget or a localization to match, not both")
        budget = _budget_of(match, arch)
        note = f"budget matched to {match.method} ({budget} parameters)"
    if budget is None:
        if not loc.chosen:
            raise MechunlearnError(f"{loc.method} ranks components but does not choose any: give a budget "
                                   "(--budget N) or a localization to match (--match LOC.json)")
        n = sum(arch.component(c).n_params for c in loc.chosen)
        return Selection(list(loc.chosen), n, n, "own choice", loc.evidence.get("granularity", "layer"), loc.method,
                         f"the method's own choice ({len(loc.chosen)} components)", model)
    if budget <= 0:
        raise MechunlearnError(f"the parameter budget must be positive, got {budget}")
    broken = [k for k, v in loc.scores.items() if not math.isfinite(v)]
    if broken:
        raise MechunlearnError(f"{loc.method}: {len(broken)} of {len(loc.scores)} scores are not finite numbers "
                               f"({broken[0]}: {loc.scores[broken[0]]}); a ranking of them is arbitrary: localize again")
    if rule == "within":
        return _within(loc, arch, budget, granularity, tolerance, note, model)
    ranked = sorted(candidates(loc.scores, arch, granularity), key=lambda c: (-c.score, c.order))
    if not ranked:
        raise MechunlearnError(f"{loc.method} scored no components")
    sizes = [c.n_params(arch) for c in ranked]
    if rule == "under":
        taken, total = [], 0
        for c, n in zip(ranked, sizes, strict=True):
            if total + n <= budget:
                taken.append(c)
                total += n
        if not taken:
            raise MechunlearnError(f"budget {budget} is smaller than the smallest {granularity} candidate "
                                   f"({min(sizes)} parameters): nothing fits")
    else:
        taken, total = [], 0
        for c, n in zip(ranked, sizes, strict=True):
            if total >= budget:
                break
            if total + n > budget and total > 0 and (total + n - budget) >= (budget - total):
                break
            taken.append(c)
            total += n
    components = [name for c in taken for name in c.components]
    if len(taken) == len(ranked) and total < budget:
        note = "; ".join(filter(None, [note, f"every scored {granularity} candidate taken: {total} < budget {budget}"]))
    return Selection(components, total, budget, rule, granularity, loc.method, note, model)


def _walk_within(ranked: list, sizes: list[int], budget: int, low: float, high: float) -> tuple[list, int]:
    """Rank order, skipping what would pass ``high``, until the total reaches ``low``; then the next
    candidate that fits is taken too if it lands nearer the budget (as ``closest`` decides its last)."""
    taken, total, i = [], 0, 0
    while i < len(ranked) and total < low:
        if total + sizes[i] <= high:
            taken.append(ranked[i])
            total += sizes[i]
        i += 1
    for c, n in zip(ranked[i:], sizes[i:], strict=True):
        if total + n <= high:
            if abs(total + n - budget) < abs(total - budget):
                taken.append(c)
                total += n
            break
    return taken, total


def _within(loc: Localization, arch: Architecture, budget: int, granularity: str, tolerance: float, note: str,
            model: dict) -> Selection:
    """The ``within`` rule (module docstring): the first granularity, from ``granularity`` down to
    the finest, whose walk lands within ``tolerance`` of ``budget``; else the nearest miss."""
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    tried = []  # (|gap|, order, granularity, taken, total, ranked)
    for level in GRANULARITIES[GRANULARITIES.index(granularity):]:
        ranked = sorted(candidates(loc.scores, arch, level), key=lambda c: (-c.score, c.order))
        if not ranked or (tried and len(ranked) == len(tried[-1][5])):
            continue  # no finer scores at this level: the same candidates again
        sizes = [c.n_params(arch) for c in ranked]
        taken, total = _walk_within(ranked, sizes, budget, low, high)
        if not taken:  # the budget is below the smallest candidate that fits: the smallest one
            i = min(range(len(ranked)), key=lambda k: (sizes[k], k))
            taken, total = [ranked[i]], sizes[i]
        tried.append((abs(total - budget), len(tried), level, taken, total, ranked))
        if low <= total <= high:
            break
    if not tried:
        raise MechunlearnError(f"{loc.method} scored no components")
    _, _, level, taken, total, ranked = tried[-1] if low <= tried[-1][4] <= high else min(tried)
    notes = [note]
    if level != granularity:
        notes.append(f"{granularity} candidates could not land within +-{tolerance:.0%} of the budget: cut at "
                     f"{level} granularity")
    if not low <= total <= high:
        notes.append(f"outside the tolerance: {total} parameters, {total / budget - 1:+.1%} against the budget "
                     f"{budget} (+-{tolerance:.0%}); the walk of the ranking lands within it at no granularity")
    if len(taken) == len(ranked) and total < budget:
        notes.append(f"every scored {level} candidate taken: {total} < budget {budget}")
    components = [name for c in taken for name in c.components]
    return Selection(components, total, budget, "within", level, loc.method, "; ".join(filter(None, notes)), model,
                     tolerance)


def load_selection(path_or_loc: str | Path | Localization | Selection, arch: Architecture, budget: int | None = None,
                   match: str | Path | Localization | Selection | None = None, granularity: str | None = None,
                   rule: str = "under") -> Selection:
    """What the edit command trains: a saved selection as it is, or a localization cut to
    ``budget`` / to the size of ``match`` (a localization or selection, object or JSON path)."""
    if isinstance(path_or_loc, str | Path):
        data = _read(path_or_loc)
        item = Selection.from_json(data) if data.get("format") == "mechunlearn.selection" else Localization.from_json(data)
    else:
        item = path_or_loc
    if isinstance(match, str | Path):
        data = _read(match)
        match = Selection.from_json(data) if data.get("format") == "mechunlearn.selection" else Localization.from_json(data)
    if isinstance(item, Selection):
        if budget is not None or match is not None:
            raise MechunlearnError("a saved selection is already cut to its budget: pass the localization JSON "
                                   "to choose another budget")
        return item.check(arch)
    return select(item, arch, budget, match, granularity, rule)
