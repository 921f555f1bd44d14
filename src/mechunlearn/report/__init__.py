from mechunlearn.report.html import results_table, verdicts, write_report

__all__ = ["results_table", "verdicts", "write_report"]
