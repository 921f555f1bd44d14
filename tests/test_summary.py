"""The terminal summary of a run reads whole at 80 columns, and names an arm that trained outside
the budget's tolerance."""

from rich.console import Console

from mechunlearn.evaluate.headline import METRICS
from mechunlearn.experiment.summary import summary_table
from mechunlearn.io import write_json_atomic

METHODS = ("fact_lookup", "causal_tracing", "attribution_patching", "random", "all_mlps", "unedited")


def test_every_method_and_metric_fits_80_columns(tmp_path):
    for setting in ("edit16", "counterfact_sequential"):
        for method in METHODS:
            cell = {"setting": setting, "method": method, "seed": 0, "n_params": 3_932_160,
                    "metrics": {name: 0.123 for name in METRICS}}
            write_json_atomic(tmp_path / "cells" / f"{setting}__{method}__s0.json", cell)
    console = Console(width=80, record=True, color_system=None)
    console.print(summary_table(tmp_path))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in "\n".join(lines)
    header = next(line for line in lines if "FLU" in line)
    assert header.split() == ["setting", "/", "metric", "FLU", "CT", "AP", "random", "all", "MLPs", "before"]
    assert any(line.split()[:2] == ["unrelated.train.p_true", "↑"] for line in lines)


def test_an_arm_outside_the_budget_tolerance_is_named_under_the_table(tmp_path):
    for seed, random_params in ((0, 1_000_000), (1, 1_500_000)):
        for method, n in (("fact_lookup", 1_000_000), ("random", random_params), ("unedited", 0)):
            cell = {"setting": "edit16", "method": method, "seed": seed, "n_params": n,
                    "metrics": {"edit.qa.p_new": 0.5}}
            write_json_atomic(tmp_path / "cells" / f"edit16__{method}__s{seed}.json", cell)
    console = Console(width=100, record=True, color_system=None)
    console.print(summary_table(tmp_path))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "outside the budget's tolerance: random in edit16 (seed 1 +50%)" in text
    (tmp_path / "cells" / "edit16__random__s1.json").unlink()
    console = Console(width=100, record=True, color_system=None)
    console.print(summary_table(tmp_path))
    assert "outside the budget" not in console.export_text()
