import json
import shutil

import pandas as pd
import pytest

from mechunlearn.io import write_json_atomic
from mechunlearn.report import verdicts, write_report
from mechunlearn.report.stats import compare, estimate


def _cell(setting, method, seed, mcq, maintain, relearn):
    return {"setting": setting, "method": method, "seed": seed, "n_params": 1000,
            "metrics": {"edit.train.p_new": 0.99, "edit.mcq.p_new": mcq, "maintain.train.p_true": maintain,
                        "relearn.error": relearn, "probe.truth": 1 - mcq, "lm_loss": 3.0},
            "curves": {"relearn": [[0, 1 - relearn + 0.1], [5, 1 - relearn]], "probe_truth": [[0, 0.5], [1, 1 - mcq]]}}


@pytest.fixture
def run_dir(tmp_path):
    cells = []
    for seed, noise in zip((0, 1, 2), (0.01, -0.02, 0.015), strict=True):
        cells += [_cell("edit16", "fact_lookup", seed, 0.8 + noise, 0.97, 0.7),
                  _cell("edit16", "causal_tracing", seed, 0.2 - noise, 0.97 + noise, 0.5),
                  _cell("edit16", "all_mlps", seed, 0.5, 0.96, 0.6),
                  _cell("edit16", "unedited", seed, 0.01, 0.98, 0.1)]
    for c in cells:
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    write_json_atomic(tmp_path / "config.json", {"model": "tiny"})
    write_json_atomic(tmp_path / "data.json", {
        "known": {"known": 10, "total": 20, "threshold": 0.7, "known_by_answer": {"a": 10}, "notes": [],
                  "dataset": "sports", "data": None},
        "known_cf16": {"known": 7, "total": 30, "threshold": 0.5, "known_by_answer": {}, "dataset": "counterfact",
                       "data": "cf.csv", "notes": ["2 facts dropped: true answer and edit target share their first token"]}})
    return tmp_path


def test_estimate_and_paired_comparison():
    e = estimate([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.low < 2.0 < e.high and e.n == 3
    assert abs(e.half_width - 4.303 * 1 / 3 ** 0.5) < 1e-3  # t(0.975, 2) * sd / sqrt(n)
    one = estimate([0.4])
    assert one.low == one.high == 0.4
    d = compare({0: 0.9, 1: 0.8}, {0: 0.1, 1: 0.2}, higher_is_better=False)
    assert d.mean == pytest.approx(-0.7)


def test_verdicts_state_who_won_with_interval(run_dir):
    from mechunlearn.report.html import load_cells

    found = {(v["metric"], v["vs"]): v for v in verdicts(load_cells(run_dir))}
    mcq = found[("edit.mcq.p_new", "causal_tracing")]
    assert mcq["advantage"] == pytest.approx(0.6 + 2 * (0.01 - 0.02 + 0.015) / 3, abs=1e-9)
    assert mcq["low"] > 0 and "beat causal tracing" in mcq["text"]
    maintain = found[("maintain.train.p_true", "causal_tracing")]
    assert "no clear difference" in maintain["text"] or "worse" in maintain["text"]
    assert all(v["vs"] != "all_mlps" for v in found.values())


def test_report_files(run_dir):
    page = write_report(run_dir)
    text = page.read_text()
    assert "FLU beat causal tracing" in text and "data:image/png;base64," in text
    assert "10 of 20 facts (built-in sports) known by the model at P(true) &gt; 0.7" in text
    assert "Setting cf16: 7 of 30 facts (cf.csv) known" in text and "2 facts dropped" in text
    table = pd.read_csv(run_dir / "results.csv")
    assert len(table) == 12 and set(table.method) == {"fact_lookup", "causal_tracing", "all_mlps", "unedited"}
    assert (run_dir / "report" / "spider_edit16.png").stat().st_size > 10_000
    assert json.loads((run_dir / "verdicts.json").read_text())


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_report_loads_in_a_real_browser_without_errors(run_dir):
    from playwright.sync_api import sync_playwright

    page_path = write_report(run_dir)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        title = page.title()
        browser.close()
    assert title == "mechunlearn report"
    assert errors == []
    assert len(images) >= 5 and all(done and width > 100 for done, width in images)
