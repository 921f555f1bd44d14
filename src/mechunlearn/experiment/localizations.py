"""Every method's localization of one seed's facts, cached in the run folder, and its selection at
the shared trained-parameter budget."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment.config import RunConfig
from mechunlearn.experiment.facts import SeedFacts
from mechunlearn.localize import Localization, Selection, localize, select
from mechunlearn.localize.base import model_mismatch
from mechunlearn.localize.catalog import uses_probes
from mechunlearn.models.loading import LoadedModel
from mechunlearn.profiling import stage
from mechunlearn.report.methods import VARIANT, split_arm

log = logging.getLogger(__name__)


class Localizations:
    def __init__(self, config: RunConfig, folder: Path, console: Console):
        self.config, self.folder, self.console = config, folder, console
        self.weights: str | None = None  # the run's model's weights hash, which a cached localization must fit
        self.force = False  # train cached localizations made on another model anyway

    def localize(self, lm: LoadedModel, arm: str, facts: SeedFacts, seed: int, path: Path | None = None
                 ) -> Localization:
        """The localization ``arm`` is cut from (a method, or an FLU variant) on ``lm`` as it is
        now; cached at ``path`` when one is given."""
        if path is not None and path.exists():
            loc = Localization.load(path)
            problem = model_mismatch((loc.evidence or {}).get("model"), lm.arch, lm.source,
                                     str(lm.model.dtype).removeprefix("torch."), self.weights)
            if problem and not self.force:
                raise MechunlearnError(f"{path}: {problem}; delete it to localize again, or run with --force")
            return loc
        self.console.print(f"localizing: {arm} (seed {seed}, {len(facts.localization)} facts)")
        method = split_arm(arm)[0]
        params = self.config.localization_params(arm)
        if uses_probes(method) and len(facts.probes) > len(facts.localization):
            params.setdefault("probe_facts", facts.probes)
        with stage(f"localization: {method}", absorb=True):
            loc = localize(lm, facts.localization, method, seed=seed, **params)
        if path is not None:
            loc.save(path)
            _try_heatmap(loc, path.with_suffix(".png"))
        return loc

    def selections(self, fresh_model, facts: SeedFacts, seed: int, tag: str) -> dict[str, Selection]:
        """Every arm's selection on the unedited model, at the budget of ``budget.match``'s own
        selection (or ``budget.params``), an FLU variant's arms at the variant's; the ``exempt``
        baselines keep their own size."""
        locs = {a: self.localize(fresh_model(), a, facts, seed, self.folder / f"{tag}{a}__s{seed}.json")
                for a in self.config.localized()}
        lm = fresh_model()
        budget = self.config.localization.budget
        matches = {}
        for variant in ["", *self.config.localization.variants]:
            matching = budget.match + (VARIANT + variant if variant else "") if budget.match else None
            matches[variant] = (select(locs[matching], lm.arch, granularity=budget.granularity, rule=budget.rule,
                                       tolerance=budget.tolerance)
                                if budget.params is None and matching else None)
        chosen = {}
        for arm in self.config.arms():
            method, variant = split_arm(arm)
            chosen[arm] = self.select(lm, arm, locs.get(arm) or locs[method], matches[variant])
            chosen[arm].save(self.folder / f"{tag}{arm}__s{seed}.selection.json")
        return chosen

    def select(self, lm: LoadedModel, arm: str, loc: Localization, match: Selection | None) -> Selection:
        budget = self.config.localization.budget
        method = split_arm(arm)[0]
        own_size = method == budget.match or method in budget.exempt
        return select(loc, lm.arch, budget=None if own_size else budget.params, match=None if own_size else match,
                      granularity=budget.granularity, rule=budget.rule, tolerance=budget.tolerance)

    def budget_record(self, arm: str, selection: Selection | None) -> dict | None:
        """What a cell records of the budget its arm was cut to (None: an arm of its own size, FLU
        or an exempt baseline): the report flags an arm outside the tolerance."""
        budget = self.config.localization.budget
        method, variant = split_arm(arm)
        if selection is None or method == budget.match or method in budget.exempt:
            return None
        matched = budget.match + (VARIANT + variant if variant else "") if budget.match and budget.params is None else None
        return {"params": selection.budget, "matched_to": matched, "rule": selection.rule,
                "tolerance": budget.tolerance}

    def reselect(self, lm: LoadedModel, arm: str, facts: SeedFacts, seed: int, first: dict[str, Selection]
                 ) -> Selection:
        """A later block of a sequential edit: ``arm`` localized again on the model edited so far,
        at the budget fixed by the first block's ``budget.match`` selection (of its FLU variant)."""
        budget = self.config.localization.budget
        method, variant = split_arm(arm)
        loc = self.localize(lm, arm if arm in self.config.localized() else method, facts, seed)
        matching = budget.match + (VARIANT + variant if variant else "") if budget.match else None
        match = first.get(matching) if budget.params is None and matching else None
        return self.select(lm, arm, loc, match)


def _try_heatmap(loc: Localization, path: Path) -> None:
    try:
        from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves

        plot_heatmap(loc, path)
        if uses_probes(loc.method):
            plot_probe_curves(loc, path.with_name(path.stem + ".probes.png"))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose a finished localization
        log.warning("could not plot %s: %s", path.name, e)
