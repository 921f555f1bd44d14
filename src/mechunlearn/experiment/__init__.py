"""The paper's comparison as one command: ``config`` (the typed schema), ``facts`` (known facts,
localization facts, splits), ``localizations`` (every method at one budget), ``sweep``
(hyperparameters chosen on a validation carve), ``runner`` (the grid of cells, resumable) and
``summary`` (the terminal table). The names below are imported on first use
(``mechunlearn._lazy``): the config needs no torch."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.experiment.config", ("RunConfig", "SettingSpec", "load_config", "only_settings",
                                       "packaged_configs", "parse_overrides")),
    ("mechunlearn.experiment.runner", ("BASE", "Experiment")),
    ("mechunlearn.experiment.summary", ("summary_table",)),
))

__all__ = ["BASE", "Experiment", "RunConfig", "SettingSpec", "load_config", "only_settings", "packaged_configs",
           "parse_overrides", "summary_table"]
