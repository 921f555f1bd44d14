"""The report of a run folder (HTML, results.csv, verdicts.json). The names below are imported
on first use (``mechunlearn._lazy``)."""

from mechunlearn._lazy import exports_of, lazy_package

lazy_package(__name__, exports_of(
    ("mechunlearn.report.html", ("results_table", "write_report")),
    ("mechunlearn.report.verdicts", ("verdicts",)),
))

__all__ = ["results_table", "verdicts", "write_report"]
