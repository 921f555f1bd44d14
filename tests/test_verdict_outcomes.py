"""The four outcomes of a primary comparison on constructed results, the one-seed sentence, and the
planner on a constructed pilot whose seed-level and fact-level spread are known."""

import html
import math
import re

import numpy as np
import pytest

from mechunlearn.cli.app import invoke
from mechunlearn.io import write_json_atomic
from mechunlearn.report.analysis import AnalysisSpec, fact_values
from mechunlearn.report.html import write_report
from mechunlearn.report.planner import lines, plan
from mechunlearn.report.stats import sd_upper, seeds_needed
from mechunlearn.report.verdicts import one_seed_note, verdicts


def _cell(method, seed, values, relearn=None):
    rows = [{"id": f"f{i}", "format": "qa", "p_true": 1 - v, "p_new": v} for i, v in enumerate(values)]
    metrics = {"edit.qa.p_new": float(np.mean(values)), "lm_loss": 3.0}
    evaluation = {"forget": {"rows": rows}, "attacks": {}}
    if relearn is not None:
        metrics["relearn.error"] = float(np.mean(relearn))
        evaluation["attacks"]["relearn"] = {"config": {"formats": ["train"]}, "rows": [
            {"id": f"f{i}", "format": "train", "p_true": 1 - e, "p_new": None} for i, e in enumerate(relearn)]}
    return {"setting": "s", "method": method, "seed": seed, "n_params": 10, "metrics": metrics, "curves": {},
            "evaluation": evaluation, "seconds": 60.0}


def _experiment(effect, seeds, facts=16, seed_sd=0.0, fact_sd=0.02, salt=0):
    rng = np.random.default_rng(salt)
    cells = []
    for seed in range(seeds):
        base = 0.6 + rng.normal(0, 0.05, facts)
        shift = effect + rng.normal(0, seed_sd)
        flu = base + shift + rng.normal(0, fact_sd, facts)
        cells += [_cell("fact_lookup", seed, flu.tolist()), _cell("causal_tracing", seed, base.tolist())]
    return cells


def _primary(cells, **spec):
    found = [v for v in verdicts(cells, AnalysisSpec(**spec)) if v["primary"]]
    assert len(found) == 1 and found[0]["metric"] == "edit.qa.p_new" and found[0]["comparisons"] == 1
    return found[0]


def test_a_clear_win_a_clear_loss_equivalence_and_too_few_seeds():
    win = _primary(_experiment(0.2, 10))
    assert win["outcome"] == "better" and win["p_holm"] < 1e-6 and win["low"] > 0.15
    assert win["text"].startswith("P(edit target), question/answer prompt: FLU better than causal tracing by 0.198 "
                                  "(95.0% simultaneous interval +0.196 to +0.200, 10 seeds, 1 primary comparison;")
    loss = _primary(_experiment(-0.2, 10, salt=1))
    assert loss["outcome"] == "worse" and loss["high"] < -0.15 and "FLU worse than causal tracing" in loss["text"]
    same = _primary(_experiment(0.0, 10, salt=2))
    assert same["outcome"] == "equivalent" and same["p_equivalence_holm"] < 0.05 and -0.05 < same["low"] < same["high"] < 0.05
    assert "equivalent within ±0.05" in same["text"]
    few = _primary(_experiment(0.1, 2, seed_sd=0.1, salt=3))
    assert few["outcome"] == "inconclusive" and not few["significant"]
    assert few["mde"] > 0.1 and few["seeds_for_delta"] > 2
    assert f"about {few['seeds_for_delta']} seeds would bring it to 0.05" in few["text"]


def test_a_real_but_negligible_difference_is_still_better_and_equivalence_needs_the_margin():
    tiny = _primary(_experiment(0.01, 20, fact_sd=0.002))
    assert tiny["outcome"] == "better" and tiny["p_equivalence_holm"] < 0.05  # both: a win smaller than delta
    assert tiny["within_delta"] and "The difference is smaller than the ±0.05 that matters: its 90.0% interval" in tiny["text"]
    clear = _primary(_experiment(0.2, 10))
    assert not clear["within_delta"] and "smaller than" not in clear["text"]
    wide = _primary(_experiment(0.0, 10, salt=2), delta=0.001)
    assert wide["outcome"] == "inconclusive"


def test_the_report_says_how_many_differences_found_are_smaller_than_delta(tmp_path):
    for c in _experiment(0.01, 20, fact_sd=0.002):
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    text = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(write_report(tmp_path).read_text())).split())
    assert ("Verdict on the 1 primary comparisons (FLU better / worse / equivalent / inconclusive): 1 / 0 / 0 / 0 "
            "(1 of the 1 better or worse by less than delta); each below.") in text
    assert "better, within ±0.05" in text  # the table's outcome column


def test_one_seed_gives_one_sentence_with_a_lower_bound_from_the_fact_spread():
    cells = _experiment(0.05, 1, fact_sd=0.2, salt=4)
    row = _primary(cells)
    assert row["outcome"] == "descriptive" and row.get("p_holm") is None
    fact_sd = np.std([a - b for a, b in zip(*(
        [fact_values(c, "edit.qa.p_new")[f"f{i}"] for i in range(16)] for c in cells), strict=True)], ddof=1)
    assert row["fact_sd"] == pytest.approx(fact_sd)
    assert row["seeds_for_delta"] == seeds_needed(fact_sd / 4, 0.05, 0.05)
    note = one_seed_note(verdicts(cells))
    assert note.startswith("One seed: every comparison below is descriptive, not a verdict")
    assert f"at least {row['seeds_for_delta']} seeds" in note


def test_fact_values_average_to_the_metric():
    cell = _cell("fact_lookup", 0, [0.2, 0.4, 0.9], relearn=[0.5, 0.7])
    assert np.mean(list(fact_values(cell, "edit.qa.p_new").values())) == pytest.approx(cell["metrics"]["edit.qa.p_new"])
    assert fact_values(cell, "relearn.error") == pytest.approx({"f0": 0.5, "f1": 0.7})
    assert fact_values(cell, "probe.truth") is None and fact_values(cell, "forget.qa.err")["f2"] == pytest.approx(0.9)


def test_the_planner_splits_the_spread_and_counts_seeds(tmp_path):
    seed_sd, fact_sd = 0.03, 0.3
    cells = _experiment(0.0, 8, facts=16, seed_sd=seed_sd, fact_sd=fact_sd, salt=5)
    for c in cells:
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    planned = plan(tmp_path)
    row = planned["rows"][0]
    assert row["fact_sd"] == pytest.approx(fact_sd, rel=0.15)
    assert row["seed_sd"] ** 2 + row["fact_sd"] ** 2 / 16 == pytest.approx(row["sd"] ** 2)
    assert row["seeds_for_delta"] == seeds_needed(row["sd"], 0.05, 0.05)
    assert row["seeds_for_delta_at_64_facts"] < row["seeds_for_delta"]  # the facts dominate the spread here
    s = planned["settings"]["s"]
    assert s["seeds so far"] == 8 and s["seeds for every MDE <= delta"] == row["seeds_for_delta"]
    assert s["arms per seed"] == 2 and s["seconds per trained cell"] == 60.0
    confident = seeds_needed(sd_upper(row["sd"], 8), 0.05, 0.05)
    assert row["seeds_for_delta_confident"] == confident > row["seeds_for_delta"]
    assert s["seeds with confidence in the spread"] == confident
    said = next(line for line in lines(planned) if line.startswith("s: "))
    assert f"with 64 facts per seed: {row['seeds_for_delta_at_64_facts']}, if the per-fact spread stays" in said
    assert f"; {confident} seeds reach it with 80% confidence in this pilot's spread;" in said

    assert invoke(["plan", str(tmp_path), "--delta", "0.1"]) == 0
    assert invoke(["plan", str(tmp_path / "nothing")]) == 2
    assert not math.isnan(row["mde"])


def test_the_planner_plans_a_focused_run_against_fewer_methods(tmp_path, capsys):
    cells = _experiment(0.0, 6, seed_sd=0.03, fact_sd=0.3, salt=6)
    cells += [{**c, "method": "attribution_patching"} for c in cells if c["method"] == "causal_tracing"]
    for c in cells:
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    both = {r["vs"]: r for r in plan(tmp_path)["rows"]}
    focused = plan(tmp_path, AnalysisSpec(against=("causal_tracing",)))["rows"]
    assert sorted(both) == ["attribution_patching", "causal_tracing"] and both["causal_tracing"]["comparisons"] == 2
    assert [(r["vs"], r["comparisons"]) for r in focused] == [("causal_tracing", 1)]
    assert focused[0]["seeds_for_delta"] == seeds_needed(focused[0]["sd"], 0.05, 0.05)
    assert focused[0]["seeds_for_delta"] < both["causal_tracing"]["seeds_for_delta"]  # alpha / 1, not alpha / 2

    capsys.readouterr()
    assert invoke(["plan", str(tmp_path), "--against", "causal_tracing"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "FLU against causal_tracing" in said and f"seeds for delta: {focused[0]['seeds_for_delta']}" in said
    assert "attribution patching" not in said
    for wrong in ("causal_tracng", "unedited", "fact_lookup"):
        assert invoke(["plan", str(tmp_path), "--against", wrong]) == 2
        assert (f"{wrong} is not an arm FLU is compared with in this run (it holds attribution_patching, "
                "causal_tracing)") in " ".join(capsys.readouterr().err.split())


def test_the_upper_limit_of_a_pilots_spread_covers_the_true_spread_in_80_percent_of_pilots():
    rng = np.random.default_rng(7)
    for n in (3, 10, 30):
        pilots = rng.normal(0.0, 0.07, (4000, n))
        upper = np.array([sd_upper(float(np.std(p, ddof=1)), n) for p in pilots])
        point = np.std(pilots, axis=1, ddof=1)
        assert 0.78 <= np.mean(upper >= 0.07) <= 0.82  # planned on the limit: enough in 80% of pilots
        assert np.mean(point >= 0.07) < 0.5  # planned on the estimate: enough in fewer than half
    assert sd_upper(0.1, 10) == pytest.approx(0.1 * math.sqrt(9 / 5.380053), rel=1e-5)  # chi2(9) 20% quantile
    assert math.isnan(sd_upper(0.1, 1))
