"""The verdict's design: which comparisons are primary, the smallest difference that matters, and
how the seed-to-seed and fact-to-fact spread of a run split, so that a planner can say how many
seeds (or facts per seed) a decision needs.

The unit of analysis is the seed. Every seed draws its own localization facts, forget facts and
training order, and within a seed every arm is trained and evaluated on the same facts, so the
per-seed paired difference (FLU minus the other arm, averaged over the seed's facts) is one
independent replicate of the experiment. A model of the per-fact differences with a random seed
effect estimates the same mean with the same n - 1 degrees of freedom when each seed has the same
facts for both arms; pooling the facts as if they were independent ignores the seed-to-seed spread
and rejects far too often (docs/analysis.md). The per-fact rows are used to split the variance of a
seed's difference into a seed part and a fact part, which tells whether more facts per seed would
help as much as more seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mechunlearn.io import read_json
from mechunlearn.report.methods import OURS, VARIANT, compared

# the paper's claims: the edit or unlearning generalises to the other prompt formats, resists
# relearning, and leaves no trace of the truth that a probe of the hidden states can read
GENERALISATION = ("edit.qa.p_new", "edit.mcq.p_new", "edit.paraphrase.p_new",
                  "forget.qa.err", "forget.mcq.err", "forget.paraphrase.err")
CLAIMS = (*GENERALISATION, "relearn.error", "probe.truth")


@dataclass(frozen=True)
class AnalysisSpec:
    # the comparisons that carry the verdict: FLU against each method of `against` on each metric
    # of `primary`; null: the paper's three claims (generalisation to the setting's other formats,
    # relearning error, the probe reading the truth) against every output-tracing method and random
    primary: tuple[str, ...] | None = None
    against: tuple[str, ...] | None = None
    delta: float = 0.05  # the smallest difference that matters, in the metric's units
    delta_per_metric: dict[str, float] = field(default_factory=dict)  # e.g. {lm_loss: 0.05}
    alpha: float = 0.05  # family-wise, over the primary comparisons of a setting
    power: float = 0.8  # for the minimum detectable effect and the seeds a verdict needs

    @classmethod
    def from_json(cls, data: dict | None) -> AnalysisSpec:
        data = dict(data or {})
        for key in ("primary", "against"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def of_run(cls, run_dir: Path) -> AnalysisSpec:
        """The analysis a run folder's config declares (defaults where it declares none)."""
        config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
        return cls.from_json(config.get("analysis"))

    def delta_for(self, metric: str) -> float:
        return self.delta_per_metric.get(metric, self.delta)

    def primary_metrics(self, present: list[str]) -> list[str]:
        wanted = self.primary if self.primary is not None else CLAIMS
        return [m for m in present if m in wanted]

    def compared(self, methods: set[str], variant: str = "") -> list[str]:
        """The arms FLU (or its ``variant``) is compared with: those cut to its own budget."""
        suffix = VARIANT + variant if variant else ""
        wanted = self.against if self.against is not None else compared()
        return [m + suffix for m in wanted if m + suffix in methods and m != OURS]

    def describe(self) -> str:
        metrics = ", ".join(self.primary) if self.primary is not None else (
            "the paper's three claims: generalisation to the setting's other prompt formats, relearning error "
            "and the probe reading the true answer")
        against = ", ".join(self.against) if self.against is not None else (
            "every output-tracing localization and random components of the same budget")
        return f"FLU against {against}, on {metrics}"


def fact_values(cell: dict, metric: str) -> dict[str, float] | None:
    """The per-fact values whose mean over the cell's facts is ``metric`` (None where the cell
    keeps no per-fact rows for it: probes, LM loss)."""
    evaluation = cell.get("evaluation") or {}
    family, _, rest = metric.partition(".")
    if family in ("edit", "forget") and rest.count(".") == 1:
        fmt, key = rest.split(".")
        rows = [r for r in (evaluation.get("forget") or {}).get("rows", []) if r.get("format") == fmt]
        pick = {"p_new": lambda r: r["p_new"], "err": lambda r: 1 - r["p_true"]}.get(key)
    elif metric == "relearn.error":
        relearn = (evaluation.get("attacks") or {}).get("relearn") or {}
        rows = relearn.get("rows", [])
        first = ((relearn.get("config") or {}).get("formats") or [rows[0]["format"] if rows else None])[0]
        rows = [r for r in rows if r.get("format") == first]
        pick = lambda r: 1 - r["p_true"]  # noqa: E731
    else:
        return None
    values = {r["id"]: pick(r) for r in rows if pick is not None and r.get("p_true") is not None}
    values = {k: v for k, v in values.items() if v is not None}
    return values or None


@dataclass(frozen=True)
class Spread:
    """How the variance of one seed's paired difference splits: ``seed_var`` between seeds and
    ``fact_var`` between facts within a seed (so a seed of n facts has variance seed_var +
    fact_var / n). ``fact_var`` is None where there are no per-fact rows."""
    total_sd: float  # of the per-seed differences, as observed
    n_facts: float | None  # facts per seed, on average
    fact_var: float | None
    seed_var: float | None

    def sd_at(self, n_facts: int) -> float:
        if self.fact_var is None or self.seed_var is None:
            return math.nan
        return math.sqrt(self.seed_var + self.fact_var / n_facts)


def spread(per_fact: dict[int, list[float]], per_seed: list[float]) -> Spread:
    """``per_fact``: seed -> the paired per-fact differences of that seed (may be empty);
    ``per_seed``: the per-seed differences the test uses."""
    total = statistics.stdev(per_seed) if len(per_seed) > 1 else math.nan
    usable = [d for d in per_fact.values() if len(d) > 1]
    if not usable:
        return Spread(total, None, None, None)
    fact_var = statistics.fmean(statistics.variance(d) for d in usable)
    n_facts = statistics.fmean(len(d) for d in usable)
    seed_var = None if math.isnan(total) else max(0.0, total ** 2 - fact_var / n_facts)
    return Spread(total, n_facts, fact_var, seed_var)
