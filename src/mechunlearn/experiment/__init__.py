"""The paper's comparison as one command: ``config`` (the typed schema), ``facts`` (known facts,
localization facts, splits), ``localizations`` (every method at one budget), ``sweep``
(hyperparameters chosen on a validation carve), ``runner`` (the grid of cells, resumable) and
``summary`` (the terminal table)."""

from mechunlearn.experiment.config import (
    RunConfig,
    SettingSpec,
    load_config,
    only_settings,
    packaged_configs,
    parse_overrides,
)
from mechunlearn.experiment.runner import BASE, Experiment
from mechunlearn.experiment.summary import summary_table

__all__ = ["BASE", "Experiment", "RunConfig", "SettingSpec", "load_config", "only_settings", "packaged_configs",
           "parse_overrides", "summary_table"]
