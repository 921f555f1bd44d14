"""Every method's localization of one seed's facts, cached in the run folder, and its selection at
the shared trained-parameter budget."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from mechunlearn.experiment.config import RunConfig
from mechunlearn.experiment.facts import SeedFacts
from mechunlearn.localize import Localization, Selection, localize, select
from mechunlearn.models.loading import LoadedModel

log = logging.getLogger(__name__)


class Localizations:
    def __init__(self, config: RunConfig, folder: Path, console: Console):
        self.config, self.folder, self.console = config, folder, console

    def localize(self, lm: LoadedModel, method: str, facts: SeedFacts, seed: int, path: Path | None = None
                 ) -> Localization:
        """``method`` on ``lm`` as it is now; cached at ``path`` when one is given."""
        if path is not None and path.exists():
            return Localization.load(path)
        self.console.print(f"localizing: {method} (seed {seed}, {len(facts.localization)} facts)")
        params = dict(self.config.localization.params.get(method, {}))
        if method == "fact_lookup" and len(facts.probes) > len(facts.localization):
            params.setdefault("probe_facts", facts.probes)
        loc = localize(lm, facts.localization, method, seed=seed, **params)
        if path is not None:
            loc.save(path)
            _try_heatmap(loc, path.with_suffix(".png"))
        return loc

    def selections(self, fresh_model, facts: SeedFacts, seed: int, tag: str) -> dict[str, Selection]:
        """Every method's selection on the unedited model, at the budget of ``budget.match``'s own
        selection (or ``budget.params``); the ``exempt`` baselines keep their own size."""
        locs = {m: self.localize(fresh_model(), m, facts, seed, self.folder / f"{tag}{m}__s{seed}.json")
                for m in self.config.localization.methods}
        lm = fresh_model()
        budget = self.config.localization.budget
        match = None
        if budget.params is None and budget.match:
            match = select(locs[budget.match], lm.arch, granularity=budget.granularity, rule=budget.rule)
        chosen = {}
        for method, loc in locs.items():
            chosen[method] = self.select(lm, method, loc, match)
            chosen[method].save(self.folder / f"{tag}{method}__s{seed}.selection.json")
        return chosen

    def select(self, lm: LoadedModel, method: str, loc: Localization, match: Selection | None) -> Selection:
        budget = self.config.localization.budget
        own_size = method == budget.match or method in budget.exempt
        return select(loc, lm.arch, budget=None if own_size else budget.params, match=None if own_size else match,
                      granularity=budget.granularity, rule=budget.rule)

    def reselect(self, lm: LoadedModel, method: str, facts: SeedFacts, seed: int, first: dict[str, Selection]
                 ) -> Selection:
        """A later block of a sequential edit: ``method`` localized again on the model edited so
        far, at the budget fixed by the first block's ``budget.match`` selection."""
        budget = self.config.localization.budget
        loc = self.localize(lm, method, facts, seed)
        match = first.get(budget.match) if budget.params is None and budget.match else None
        return self.select(lm, method, loc, match)


def _try_heatmap(loc: Localization, path: Path) -> None:
    try:
        from mechunlearn.localize.plots import plot_heatmap, plot_probe_curves

        plot_heatmap(loc, path)
        if loc.method == "fact_lookup":
            plot_probe_curves(loc, path.with_name(path.stem + ".probes.png"))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose a finished localization
        log.warning("could not plot %s: %s", path.name, e)
