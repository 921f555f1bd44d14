import html
import json
import math
import re
import shutil

import pandas as pd
import pytest
from scipy.stats import ttest_rel

from mechunlearn.io import write_json_atomic
from mechunlearn.report import verdicts, write_report
from mechunlearn.report.sections import formats
from mechunlearn.report.stability import jaccard, stability_rows
from mechunlearn.report.stats import estimate, holm, t_test
from mechunlearn.report.training import bands_used, strength_rows, target_blocks, unreached_seeds


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


def test_verdicts_state_who_won_with_interval(run_dir):
    from mechunlearn.report.html import load_cells

    found = {(v["metric"], v["vs"]): v for v in verdicts(load_cells(run_dir))}
    mcq = found[("edit.mcq.p_new", "causal_tracing")]
    assert mcq["advantage"] == pytest.approx(0.6 + 2 * (0.01 - 0.02 + 0.015) / 3, abs=1e-9)
    assert mcq["primary"] and mcq["outcome"] == "better" and mcq["low"] > 0
    assert "FLU better than causal tracing by 0.603" in mcq["text"]
    maintain = found[("maintain.train.p_true", "causal_tracing")]
    assert not maintain["primary"] and maintain["outcome"] == "descriptive" and "p_holm" not in maintain
    assert all(v["vs"] != "all_mlps" for v in found.values())
    assert {k for k, v in found.items() if v["primary"]} == {
        ("edit.mcq.p_new", "causal_tracing"), ("relearn.error", "causal_tracing"), ("probe.truth", "causal_tracing")}


def test_report_files(run_dir):
    page = write_report(run_dir)
    text = page.read_text()
    assert "FLU better than causal tracing" in text and "data:image/png;base64," in text
    assert "10 of 20 facts (built-in sports) known by the model at P(true) &gt; 0.7" in text
    assert "Setting cf16: 7 of 30 facts (cf.csv) known" in text and "2 facts dropped" in text
    table = pd.read_csv(run_dir / "results.csv")
    assert len(table) == 12 and set(table.method) == {"fact_lookup", "causal_tracing", "all_mlps", "unedited"}
    assert (run_dir / "report" / "spider_edit16.png").stat().st_size > 10_000
    written = {(v["metric"], v["vs"]): v for v in json.loads((run_dir / "verdicts.json").read_text())}
    assert {v["comparisons"] for v in written.values()} == {3}  # the 3 claims present x 1 output-tracing method
    mcq = written[("edit.mcq.p_new", "causal_tracing")]
    raw_p = ttest_rel([0.81, 0.78, 0.815], [0.19, 0.22, 0.185]).pvalue
    assert mcq["p"] == pytest.approx(raw_p) and mcq["significant"] and mcq["significant_raw"]
    # Holm over the primary family: relearn.error has p = 0 (rank 1); mcq and probe.truth share raw_p
    # (ranks 2, 3): 2 x raw_p for both
    assert mcq["p_holm"] == pytest.approx(2 * raw_p)
    assert written[("probe.truth", "causal_tracing")]["p_holm"] == pytest.approx(2 * raw_p)
    maintain = written[("maintain.train.p_true", "causal_tracing")]
    assert not maintain["significant"] and not maintain["significant_raw"] and maintain["p"] > 0.05
    assert written[("lm_loss", "causal_tracing")]["p"] == 1.0 and not written[("lm_loss", "causal_tracing")]["primary"]
    assert "Per setting: edit16: 3." in text and "Holm" in text and "Secondary comparisons (descriptive)" in text


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
        widths = {}
        for width in (1400, 900):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            widths[width] = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            text = page.inner_text("body")
            title = page.title()
        browser.close()
    assert title == "mechunlearn report"
    assert errors == []
    assert len(images) >= 5 and all(done and width > 100 for done, width in images)
    assert all(scroll <= client for scroll, client in widths.values()), widths  # no sideways scrolling
    assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b", text), re.search(r".{40}(None|nan|NaN).{40}", text)


# --- the fairness of the comparison: multiplicity, training strength, FLU stability, formats ---------------

_SEVEN = ("edit.train.p_new", "edit.qa.p_new", "edit.mcq.p_new", "edit.paraphrase.p_new", "relearn.error",
          "maintain.train.p_true", "neighborhood.p_true")


def _cells_with_advantages(advantages: dict[str, list[float]]) -> list[dict]:
    """FLU, causal tracing and attribution patching over 3 seeds on seven metrics (14 comparisons);
    FLU's per-seed advantage over causal tracing on a metric is ``advantages[metric]`` (else noise)."""
    noise = (0.01, -0.02, 0.012)
    cells = []
    for seed in range(3):
        for method in ("fact_lookup", "causal_tracing", "attribution_patching"):
            metrics = {}
            for i, name in enumerate(_SEVEN):
                base = 0.5 + 0.01 * i
                if method == "fact_lookup":
                    metrics[name] = base + advantages.get(name, [0.0] * 3)[seed]
                elif method == "causal_tracing" and name in advantages:
                    metrics[name] = base
                else:
                    metrics[name] = base + noise[(seed + i + (method == "causal_tracing")) % 3]
            cells.append({"setting": "s", "method": method, "seed": seed, "metrics": metrics, "curves": {}})
    return cells


def test_holm_adjusted_p_values_and_the_paired_test():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, math.nan, 0.001])
    assert adjusted[2] == pytest.approx(0.003) and adjusted[0] == pytest.approx(0.4) and adjusted[1] == 1.0
    assert t_test([0.4, 0.1, 0.45])[2] == pytest.approx(ttest_rel([0.9, 0.7, 0.85], [0.5, 0.6, 0.4]).pvalue)
    assert math.isnan(t_test([1.0])[2])


def test_raw_interval_excluding_zero_is_inconclusive_after_holm():
    # advantages 0.15, 0.20, 0.25: t = 6.9 on 2 df, raw p = 0.020, but 8 primary comparisons (4 claims x 2 methods)
    found = {(v["metric"], v["vs"]): v for v in verdicts(_cells_with_advantages({"edit.qa.p_new": [0.15, 0.2, 0.25]}))}
    assert {v["comparisons"] for v in found.values()} == {8}
    qa = found[("edit.qa.p_new", "causal_tracing")]
    assert qa["significant_raw"] and qa["p"] == pytest.approx(0.0202, abs=5e-4)
    assert not qa["significant"] and qa["p_holm"] > 0.05 and qa["outcome"] == "inconclusive"
    assert qa["low"] < 0 < qa["high"] and qa["confidence"] == pytest.approx(1 - 0.05 / 8)  # Bonferroni interval
    assert "inconclusive between FLU and causal tracing: difference +0.200" in qa["text"]
    assert f"detects with 80% power is {qa['mde']:.3f}" in qa["text"] and qa["mde"] > 0.2


def test_raw_and_holm_agree_on_a_large_difference():
    found = {(v["metric"], v["vs"]): v for v in verdicts(_cells_with_advantages({"edit.qa.p_new": [0.6, 0.61, 0.59]}))}
    qa = found[("edit.qa.p_new", "causal_tracing")]
    assert qa["significant_raw"] and qa["significant"] and qa["p_holm"] < 0.01
    assert qa["text"].startswith("P(edit target), question/answer prompt: FLU better than causal tracing by 0.600")
    assert "Holm p" in qa["text"] and "8 primary comparisons" in qa["text"]
    assert found[("edit.qa.p_new", "attribution_patching")]["significant"]  # FLU's 0.6 lead over noise
    assert not any(v["significant"] for (metric, _), v in found.items() if metric != "edit.qa.p_new")


def _target(steps, strength, reached):
    return {"target": 0.9, "measure": "mean P(edit target), training prompts", "reached": reached, "steps": steps,
            "strength": strength, "checks": [[steps, strength]]}


def _with_targets(cells: list[dict]) -> list[dict]:
    """FLU reaches 0.9 in 10/12/14 steps; causal tracing stops short in seed 1; the sequential setting has 2 blocks."""
    plan = {("s", "fact_lookup"): [[(10, 0.92, True)], [(12, 0.91, True)], [(14, 0.95, True)]],
            ("s", "causal_tracing"): [[(30, 0.90, True)], [(50, 0.71, False)], [(40, 0.93, True)]],
            ("seq", "fact_lookup"): [[(5, 0.9, True), (7, 0.94, True)]] * 3,
            ("seq", "causal_tracing"): [[(5, 0.9, True), (50, 0.5, False)]] * 3}
    for c in cells:
        blocks = plan.get((c["setting"], c["method"]))
        if blocks:
            c["train"] = {"target": [_target(*b) for b in blocks[c["seed"]]], "config": {"lr": 1e-3}}
    return cells


def test_training_strength_per_method_and_unreached_arms_flagged():
    cells = _cells_with_advantages({"edit.qa.p_new": [0.6, 0.61, 0.59]})
    cells += [{**c, "setting": "seq"} for c in _cells_with_advantages({})]
    cells = _with_targets(cells)
    rows = {r["method"]: r for r in strength_rows(cells, "s")}
    assert set(rows) == {"FLU", "causal tracing"}  # attribution patching recorded no target
    assert rows["FLU"]["steps to target"] == "12 (10–14)" and rows["FLU"]["final training strength"] == "0.927 (0.910–0.950)"
    assert rows["FLU"]["reached target"] == "3/3" and rows["FLU"]["not reached in seed"] == "–"
    assert rows["causal tracing"]["reached target"] == "2/3" and rows["causal tracing"]["not reached in seed"] == "1"
    assert rows["FLU"]["lr"] == "0.001"
    assert "walked back into the band (seed: from → to)" not in rows["FLU"]  # no band recorded
    seq = {r["method"]: r for r in strength_rows(cells, "seq")}
    assert seq["FLU"]["steps to target"] == "12 (12–12)" and seq["FLU"]["final training strength"] == "0.920 (0.920–0.920)"
    assert seq["causal tracing"]["not reached in seed"] == "0 (block 2), 1 (block 2), 2 (block 2)"
    assert unreached_seeds(cells) == {("s", "causal_tracing"): [1], ("seq", "causal_tracing"): [0, 1, 2]}

    found = {(v["setting"], v["metric"], v["vs"]): v for v in verdicts(cells)}
    flagged = found[("s", "edit.qa.p_new", "causal_tracing")]
    assert flagged["target_not_reached"] == {"causal_tracing": [1]}
    assert flagged["text"].endswith("Caution: causal tracing did not reach the training target in seed 1.")
    clean = found[("s", "edit.qa.p_new", "attribution_patching")]
    assert clean["target_not_reached"] == {} and "Caution" not in clean["text"]


def test_arms_walked_back_into_the_band_are_listed():
    cells = _with_targets(_cells_with_advantages({}))
    for c in cells:
        for b in target_blocks(c):
            b["band"] = 0.05
            b["last_stretch"] = None
    flu1 = next(c for c in cells if c["method"] == "fact_lookup" and c["seed"] == 1)
    flu1["train"]["target"][0].update(strength=0.93, last_stretch={"overshoot": 0.991, "fraction": 0.5})
    rows = {r["method"]: r for r in strength_rows(cells, "s")}
    assert rows["FLU"]["walked back into the band (seed: from → to)"] == "1: 0.991 → 0.930"
    assert rows["causal tracing"]["walked back into the band (seed: from → to)"] == "–"
    assert bands_used(cells) == ["[0.9, 0.95]"] and bands_used(_with_targets(_cells_with_advantages({}))) == []


def _localization(path, method, layers, rule="score >= 0.1 x the largest"):
    write_json_atomic(path, {"format": "mechunlearn.localization", "method": method, "params": {}, "fact_ids": [],
                             "scores": {}, "model_spec": "tiny", "chosen": [],
                             "evidence": {"flu_layers": layers, "rule": rule} if method == "fact_lookup" else {}})


def test_flu_stability_over_seeds(tmp_path):
    for seed, layers in enumerate(([1, 2, 3], [1, 2], [2, 3, 5])):
        _localization(tmp_path / f"fact_lookup__s{seed}.json", "fact_lookup", layers)
    _localization(tmp_path / "causal_tracing__s0.json", "causal_tracing", None)
    write_json_atomic(tmp_path / "fact_lookup__s0.selection.json", {"components": []})
    for seed in (0, 1):
        _localization(tmp_path / f"cf16__fact_lookup__s{seed}.json", "fact_lookup", [4])
    rows = {r["localization"]: r for r in stability_rows(tmp_path)}
    assert set(rows) == {"shared by all settings", "cf16"}
    shared = rows["shared by all settings"]
    assert shared["MLP layers per seed"] == "seed 0: 1, 2, 3; seed 1: 1, 2; seed 2: 2, 3, 5"
    assert shared["Jaccard mean"] == pytest.approx((2 / 3 + 2 / 4 + 1 / 4) / 3) and shared["Jaccard min"] == 0.25
    assert rows["cf16"]["Jaccard mean"] == 1.0 and rows["cf16"]["seed pairs"] == 1
    assert jaccard(set(), set()) == 1.0


def test_report_states_targets_formats_probe_layers_and_flu_stability(run_dir):
    cells = [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]
    for c in cells:
        if c["method"] != "unedited":
            missed = c["method"] == "causal_tracing" and c["seed"] == 2
            c["train"] = {"target": [_target(20 if missed else 8, 0.6 if missed else 0.93, not missed)],
                          "lr": 0.002 if c["method"] == "causal_tracing" else 0.001,
                          "lr_rule": "the lowest lr of the grid that reaches the target on validation facts",
                          "sweep": {"rule": "highest P(edit) on 8 validation facts", "chosen": {"lr": 0.001},
                                    "trials": [{}, {}], "n_val": 8}}
        c["evaluation"] = {"attacks": {"probe": {"headline_layers": [3, 4, 5], "headline_rule": "upper half"}}}
        write_json_atomic(run_dir / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    data = json.loads((run_dir / "data.json").read_text())
    data.update({"templates": {"edit16": {"qa": "Question: What sport does {subject} play? Answer:"},
                               "absent": {"qa": "not in this run"}}, "mcq_format": "options"})
    write_json_atomic(run_dir / "data.json", data)
    for seed, layers in enumerate(([1, 2], [1, 2], [2])):
        _localization(run_dir / "localizations" / f"fact_lookup__s{seed}.json", "fact_lookup", layers)

    text = write_report(run_dir).read_text()
    assert "Every arm trained until the target (0.9 on mean P(edit target), training prompts)" in text
    assert "Did not reach the training target in some seed: causal tracing." in text
    assert "<td>8 (8–20)</td>" not in text and "<td>12 (8–20)</td>" in text  # causal tracing's steps over 3 seeds
    assert "Caution: causal tracing did not reach the training target in seed 2." in text
    assert "Learning rate per method: the lowest lr of the grid" in text and "<td>0.002</td>" in text
    assert "Hyperparameter sweep rule: highest P(edit) on 8 validation facts" in text
    assert "seed 0: lr 0.001; seed 1: lr 0.001; seed 2: lr 0.001" in html.unescape(text)
    assert "Multiple-choice format: options." in text and "What sport does {subject} play?" in text
    assert "not in this run" not in text  # templates of a setting without cells
    assert "Localization facts: not recorded." in text
    assert "the latent probe&#x27;s headline averages layers 3-5 (upper half)" in text
    assert "seed 0: 1, 2; seed 1: 1, 2; seed 2: 2" in text and "FLU&#x27;s MLP rule: score &gt;= 0.1 x the largest" in text
    written = json.loads((run_dir / "verdicts.json").read_text())
    assert {tuple(v["target_not_reached"]) for v in written} == {("causal_tracing",)}


def test_report_says_formats_not_recorded_and_no_target(run_dir):
    text = write_report(run_dir).read_text()
    assert "Multiple-choice format: not recorded." in text and "Prompt templates: not recorded." in text
    assert "No training target was recorded" in text


def test_formats_fall_back_to_what_the_evaluations_recorded():
    evaluation = {"config": {"mcq_format": "option-likelihood", "qa_template": "paper"},
                  "templates": {"qa": "Question: {question} Answer:", "train": "{subject} plays"}}
    cells = [{"setting": "a", "method": "fact_lookup", "seed": 0, "evaluation": evaluation},
             {"setting": "b", "method": "fact_lookup", "seed": 0, "evaluation": {**evaluation, "templates": {}}}]
    text = html.unescape("".join(formats({}, cells, ["a", "b"])))
    assert "Multiple-choice format: option-likelihood." in text and "Question/answer template: paper." in text
    assert "Question: {question} Answer:" in text and "{subject} plays" in text and "not recorded" in text  # rule
    assert text.count("<tr") == 3  # header + a's two templates; b recorded none
    flat = html.unescape("".join(formats({"templates": {"qa": "Q: {question} A:"}}, cells, ["a"])))
    assert "<td>all</td>" in flat and "Q: {question} A:" in flat and "{subject} plays" not in flat


def test_a_single_seed_report_says_in_one_sentence_that_it_is_descriptive(run_dir):
    for p in (run_dir / "cells").glob("*__s[12].json"):
        p.unlink()
    found = verdicts([json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))])
    assert {v["outcome"] for v in found} == {"descriptive"}
    text = html.unescape(write_report(run_dir).read_text())
    assert text.count("One seed: every comparison below is descriptive, not a verdict") == 1
    assert "not evidence either way" not in text and "None" not in text


def test_cells_with_non_finite_metrics_are_named_and_verdicts_json_stays_valid(run_dir):
    path = run_dir / "cells" / "edit16__causal_tracing__s1.json"
    cell = json.loads(path.read_text())
    cell["metrics"]["edit.mcq.p_new"] = float("nan")
    cell["metrics"]["lm_loss"] = float("inf")
    path.write_text(json.dumps(cell))  # Python writes NaN and Infinity, as a diverged arm's cell would hold them
    text = html.unescape(write_report(run_dir).read_text())
    assert "1 cell(s) hold non-finite metrics (NaN or infinite), left out of every comparison: edit16 · causal " \
           "tracing · seed 1: edit.mcq.p_new, lm_loss." in text
    written = json.loads((run_dir / "verdicts.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    mcq = next(v for v in written if v["metric"] == "edit.mcq.p_new")
    assert mcq["n"] == 2 and mcq["seeds"] == [0, 2]


def test_report_on_a_folder_that_is_not_a_run_writes_nothing(tmp_path):
    from mechunlearn.cli.app import invoke

    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "x.json").write_text("garbage")
    assert invoke(["report", str(tmp_path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells"]


def test_the_report_leads_with_the_run_the_training_and_the_verdict(run_dir):
    text = html.unescape(write_report(run_dir).read_text())
    glance = re.sub(r"<[^>]+>", " ", text[text.index("At a glance"):text.index("What the comparison found")])
    assert "Run: 1 setting(s) (edit16), 3 seed(s) (0, 1, 2); arms and trained parameters: FLU 1,000; causal " \
           "tracing 1,000; all MLPs 1,000." in glance
    assert "Training: no strength target was recorded" in glance and "Incomplete" not in glance
    assert "Verdict on the 3 primary comparisons (FLU better / worse / equivalent / inconclusive): 3 / 0 / 0 / 0" \
           in glance


def test_the_report_names_the_cells_a_seed_lacks(run_dir):
    (run_dir / "cells" / "edit16__causal_tracing__s2.json").unlink()  # a run still computing seed 2
    text = html.unescape(write_report(run_dir).read_text())
    glance = " ".join(re.sub(r"<[^>]+>", " ", text[text.index("At a glance"):text.index("What the comparison found")]).split())
    assert "Incomplete: seed 2 lacks 1 of its cells (edit16 · causal tracing). Each comparison pairs the seeds " \
           "both of its arms have" in glance
    written = json.loads((run_dir / "verdicts.json").read_text())
    assert {v["n"] for v in written if v["vs"] == "causal_tracing"} == {2}  # seeds 0 and 1
    assert "Code:" not in glance
    path = run_dir / "cells" / "edit16__causal_tracing__s1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "code": "abc123"}))
    text = " ".join(html.unescape(write_report(run_dir).read_text()).split())
    assert "Code: the cells were computed by 2 versions of mechunlearn (fingerprints abc123, none;" in text


def test_the_report_says_when_the_unedited_model_is_at_chance_on_mmlu(run_dir):
    path = run_dir / "cells" / "edit16__unedited__s0.json"
    cell = json.loads(path.read_text())
    cell["metrics"].update({"mmlu.acc": 0.286, "mmlu.chance": 0.291, "mmlu.p_above_chance": 0.62,
                            "mmlu.at_chance": 1.0})
    path.write_text(json.dumps(cell))
    text = html.unescape(write_report(run_dir).read_text())
    assert ("edit16, seed 0: the unedited model is at chance on MMLU (accuracy 0.286, chance 0.291, p = 0.62 for "
            "being above it), so MMLU cannot show a side effect of an edit here.") in text


def test_the_report_says_how_every_attack_ran_once_per_distinct_setting(run_dir):
    probe = {"config": {"C": 1.0, "form": "auto", "train_on": "auto", "headline": "upper_half", "seed": 0},
             "form": "classes", "train_on": "maintain+forget_half", "headline_rule": "mean over layers 2-3"}
    softprompt = {"config": {"max_norm_ratio": 0.1, "steps": 10, "lr": 0.1, "restarts": 3,
                             "eval_formats": ["train", "qa"], "seed": 0}}
    for path in (run_dir / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        seed_probe = {**probe, "config": {**probe["config"], "seed": cell["seed"]}}
        if cell["seed"] == 2:  # a different setting of the probe in one seed is listed beside the other
            seed_probe = {**seed_probe, "form": "pairwise", "train_on": "maintain"}
        swap = "then the halves swapped, so that every edited fact is scored " + ("(2 folds)" if cell["seed"] else "once")
        relearn = {"config": {"method": "lora", "rank": 64, "steps": 10, "learning_rate": 2e-4, "folds": 2,
                              "seed": cell["seed"]},
                   "halves": f"seeded halves (seed {cell['seed']}) of the 16 edited facts; {swap}"}
        cell["evaluation"] = {"attacks": {"probe": seed_probe, "softprompt": softprompt, "relearn": relearn}}
        path.write_text(json.dumps(cell))
    text = html.unescape(write_report(run_dir).read_text())
    glance = " ".join(re.sub(r"<[^>]+>", " ", text[text.index("At a glance"):text.index("What the comparison found")]).split())
    assert ("Probe: logistic regression over the answers (C 1) on each layer's residual, trained on the maintain facts "
            "and the first half of the edited facts, read on the other half; headline: mean over layers 2-3; a ridge "
            "map to the answer embeddings (true answer or edit target) on each layer's residual, trained on the "
            "maintain facts; headline: mean over layers 2-3.") in glance
    assert ("Soft-prompt attack: an embedding perturbation bounded at 0.1 x the mean input-embedding norm, 10 Adam "
            "steps at lr 0.1, mean over 3 restart(s), scored on train, qa.") in glance
    # one line for one attack, whatever the version of the code worded its halves
    assert ("Relearning attack: lora rank 64, 10 steps at lr 0.0002, 2 fold(s) on seeded halves of the 16 edited "
            "facts; each half trained on once and scored once. Probe:") in glance
