from mechunlearn.report.html import results_table, write_report
from mechunlearn.report.verdicts import verdicts

__all__ = ["results_table", "verdicts", "write_report"]
