"""FLU's rule as a named variant: the authors' two rules, arms cut to each variant's budget, and
the verdict under every rule."""

import html

import pytest

from mechunlearn.io import write_json_atomic
from mechunlearn.localize.fact_lookup import choose_layers
from mechunlearn.report import write_report
from mechunlearn.report.methods import label, short, split_arm
from mechunlearn.report.verdicts import verdicts

# MLP 3 dominates; marginal MLPs at 1, 2, 5-7, 9, 10 (receiver layer 11)
MLPS = {0: 0.01, 1: 0.05, 2: 0.03, 3: 0.47, 4: -0.01, 5: 0.10, 6: 0.04, 7: 0.02, 8: 0.0, 9: 0.06, 10: 0.03}
RULE = {"threshold": 0.02, "relative": 0.25, "min_probe_gain": 0.2, "plateau": 0.8}


def test_the_span_rule_takes_every_mlp_from_the_first_lookup_mlp_on():
    layers, rule, _ = choose_layers(MLPS, None, **RULE, span=True)
    assert layers == [3, 4, 5, 6, 7, 8, 9, 10] and rule.startswith("every MLP from the first")
    assert choose_layers(MLPS, None, **{**RULE, "relative": 0.0}, span=True)[0] == list(range(1, 11))
    assert choose_layers(MLPS, None, **RULE)[0] == [3]  # the default rule is unchanged


def test_the_authors_counterfact_rule_is_the_absolute_cut():
    assert choose_layers(MLPS, None, **{**RULE, "relative": 0.0})[0] == [1, 2, 3, 5, 6, 7, 9, 10]


def test_variant_arms_are_named_with_their_rule():
    assert split_arm("causal_tracing@span") == ("causal_tracing", "span") and split_arm("random") == ("random", "")
    assert label("causal_tracing@span") == "causal tracing [span]" and short("fact_lookup@span") == "FLU@span"


def _cell(method, seed, qa):
    return {"setting": "s", "method": method, "seed": seed, "n_params": 10,
            "metrics": {"edit.qa.p_new": qa, "edit.train.p_new": 0.9}, "curves": {}}


def _run(tmp_path):
    """FLU beats causal tracing clearly under the run's rule; under variant 'span' the two are equal."""
    cells = []
    for seed, noise in enumerate((0.01, -0.012, 0.008, 0.0, -0.004)):
        cells += [_cell("fact_lookup", seed, 0.8 + noise), _cell("causal_tracing", seed, 0.5),
                  _cell("fact_lookup@span", seed, 0.6 + noise), _cell("causal_tracing@span", seed, 0.6),
                  _cell("random@span", seed, 0.3 + noise)]
    for c in cells:
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    return cells


def test_each_rule_has_its_own_family_and_the_report_says_which_outcomes_change(tmp_path):
    cells = _run(tmp_path)
    found = {(v["ours"], v["vs"]): v for v in verdicts(cells) if v["primary"]}
    assert set(found) == {("fact_lookup", "causal_tracing"), ("fact_lookup@span", "causal_tracing@span"),
                          ("fact_lookup@span", "random@span")}
    assert found[("fact_lookup", "causal_tracing")]["comparisons"] == 1
    assert found[("fact_lookup@span", "random@span")]["comparisons"] == 2
    assert found[("fact_lookup", "causal_tracing")]["outcome"] == "better"
    assert found[("fact_lookup@span", "causal_tracing@span")]["outcome"] == "equivalent"
    assert found[("fact_lookup@span", "random@span")]["outcome"] == "better"
    assert found[("fact_lookup@span", "random@span")]["rule"] == "span"
    assert "FLU [span] better than random [span]" in found[("fact_lookup@span", "random@span")]["text"]
    text = html.unescape(write_report(tmp_path).read_text())
    assert "Does the verdict depend on FLU's rule?" in text
    assert "Outcomes that differ from the run's rule: 1 of the 1 comparisons made under both." in text
    assert "Per setting: s: 1, s [span]: 2." in text
    assert "better (+0.300, MDE" in text and "equivalent (+0.000, MDE" in text and "5 seeds)" in text


def test_a_variant_on_fewer_seeds_is_set_beside_the_run_s_rule_on_those_seeds(tmp_path):
    """Two variants train the same arms as the run's rule on seeds 0-2: at five seeds the run's rule
    is better, at three seeds neither is: the outcome moved with the power, not with the rule."""
    cells = []
    for seed, gap in enumerate((0.05, 0.15, 0.02, 0.12, 0.10)):
        arms = [("fact_lookup", 0.5 + gap), ("causal_tracing", 0.5)]
        cells += [_cell(m, seed, qa) for m, qa in arms]
        if seed < 3:
            cells += [_cell(m + rule, seed, qa) for m, qa in arms for rule in ("@late", "@other")]
    for c in cells:
        write_json_atomic(tmp_path / "cells" / f"{c['setting']}__{c['method']}__s{c['seed']}.json", c)
    found = {v["ours"]: v for v in verdicts(cells) if v["primary"]}
    assert (found["fact_lookup"]["outcome"], found["fact_lookup@late"]["outcome"]) == ("better", "inconclusive")
    text = html.unescape(write_report(tmp_path).read_text())
    section = text[text.index("Does the verdict depend on FLU's rule?"):]
    assert "Outcomes that differ from the run's rule: 0 of the 2 comparisons made under both." in section
    assert "the run's rule on the seeds of late, other" in section  # one column for the two variants
    assert section.count("inconclusive (+0.073, MDE") == 3 and "better (+0.088, MDE" in section
@pytest.mark.parametrize("rule", ["span", "paper_cf"])
def test_named_rules_pass_the_config(rule):
    from mechunlearn.experiment.config import from_dict

    params = {"span": {"span": True, "relative": 0.0}, "paper_cf": {"relative": 0.0, "min_probe_gain": 1.0}}[rule]
    config = from_dict({"localization": {"methods": ["fact_lookup", "causal_tracing", "random", "all_mlps"],
                                         "variants": {rule: params}}})
    assert config.arms() == ["fact_lookup", "causal_tracing", "random", "all_mlps", f"fact_lookup@{rule}",
                             f"causal_tracing@{rule}", f"random@{rule}"]
    assert config.localized() == ["fact_lookup", "causal_tracing", "random", "all_mlps", f"fact_lookup@{rule}"]
    assert config.localization_params(f"fact_lookup@{rule}") == params


def test_a_run_holds_each_variant_beside_the_run_s_flu_with_arms_at_its_budget(tiny_grid, tmp_path, one_thread):
    import json

    from mechunlearn.experiment import Experiment, load_config
    from mechunlearn.experiment.plan import plan
    from mechunlearn.models.tiny import tiny_model

    model = tmp_path / "tiny"
    lm = tiny_model("llama", n_layers=6)
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    localization = {"n_facts": 6, "probe_facts": 0, "methods": ["fact_lookup", "random", "all_mlps"],
                    "budget": {"match": "fact_lookup", "rule": "closest", "granularity": "matrix"},
                    "params": {"fact_lookup": {"relative": 0.9}}}
    out = tmp_path / "run"
    Experiment(load_config(tiny_grid(model=str(model), seeds=[0], localization=localization)), out).run()
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == [
        "edit4__all_mlps__s0.json", "edit4__fact_lookup__s0.json", "edit4__random__s0.json", "edit4__unedited__s0.json"]

    # every MLP below the receiver layer of the top head alone, whatever its score
    localization["variants"] = {"wide": {"top_heads": 1, "relative": -1.0, "threshold": -1.0}}
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    config = load_config(tiny_grid(model=str(model), seeds=[0], localization=localization))
    Experiment(config, out).run()  # a variant added to the folder computes only its own arms
    cells = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert sorted(cells) == sorted([*stamps, "edit4__fact_lookup@wide__s0.json", "edit4__random@wide__s0.json"])
    assert all((out / "cells" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    sel = {a: json.loads((out / "localizations" / f"{a}__s0.selection.json").read_text())
           for a in ("fact_lookup", "fact_lookup@wide", "random", "random@wide")}
    flu, wide = json.loads((out / "localizations" / "fact_lookup__s0.json").read_text()), json.loads(
        (out / "localizations" / "fact_lookup@wide__s0.json").read_text())
    assert len(wide["evidence"]["flu_layers"]) > len(flu["evidence"]["flu_layers"])  # every MLP below the receiver
    assert sel["fact_lookup@wide"]["n_params"] > sel["fact_lookup"]["n_params"]
    assert cells["edit4__random@wide__s0.json"]["n_params"] == sel["random@wide"]["n_params"]
    assert sel["random@wide"]["budget"] == sel["fact_lookup@wide"]["n_params"]  # cut to the variant's budget
    assert sel["random"]["budget"] == sel["fact_lookup"]["n_params"]
    assert [c for c in plan(config).cells if "@" in c[1]] == [("edit4", "fact_lookup@wide", 0),
                                                                 ("edit4", "random@wide", 0)]


def test_an_arm_that_trains_what_another_arm_trained_copies_its_cell(tiny_grid, tmp_path, one_thread):
    import json

    from mechunlearn.experiment import Experiment, load_config
    from mechunlearn.models.tiny import tiny_model

    model = tmp_path / "tiny"
    lm = tiny_model("llama", n_layers=6)
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    wide = {"top_heads": 1, "relative": -1.0, "threshold": -1.0}
    localization = {"n_facts": 6, "probe_facts": 0, "methods": ["fact_lookup", "random", "all_mlps"],
                    "budget": {"match": "fact_lookup", "rule": "closest", "granularity": "matrix"},
                    "params": {"fact_lookup": {"relative": 0.9}}, "variants": {"a": wide, "b": dict(wide)}}
    both, alone = tmp_path / "both", tmp_path / "alone"
    Experiment(load_config(tiny_grid(model=str(model), seeds=[0], localization=localization)), both).run()
    cells = {p.stem.split("__")[1]: json.loads(p.read_text()) for p in (both / "cells").glob("*.json")}
    for arm in ("fact_lookup", "random"):
        copy, source = cells[f"{arm}@b"], cells[f"{arm}@a"]
        assert copy["train"]["same_as"] == f"{arm}@a" and "same_as" not in source["train"]
        assert copy["components"] == source["components"] and copy["metrics"] == source["metrics"]
        assert copy["method"] == f"{arm}@b" and copy["seconds"] == 0.0
    assert "same_as" not in cells["fact_lookup"]["train"]  # the run's own FLU chose fewer MLPs: computed
    assert cells["random@b"]["budget"]["matched_to"] == "fact_lookup@b"  # its own budget record

    # a cell that other code computed (an older version, a snapshot) is never copied
    for arm in ("fact_lookup@a", "random@a"):
        path = both / "cells" / f"edit4__{arm}__s0.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "code": "other"}))
    for arm in ("fact_lookup@b", "random@b"):
        (both / "cells" / f"edit4__{arm}__s0.json").unlink()
    Experiment(load_config(tiny_grid(model=str(model), seeds=[0], localization=localization)), both).run()
    for arm in ("fact_lookup@b", "random@b"):
        again = json.loads((both / "cells" / f"edit4__{arm}__s0.json").read_text())
        assert "same_as" not in again["train"] and again["seconds"] > 0 and again["metrics"] == cells[arm]["metrics"]

    # the copy holds what computing the arm gives
    localization["variants"] = {"b": wide}
    Experiment(load_config(tiny_grid(model=str(model), seeds=[0], localization=localization)), alone).run()
    for arm in ("fact_lookup@b", "random@b"):
        computed = json.loads((alone / "cells" / f"edit4__{arm}__s0.json").read_text())
        assert "same_as" not in computed["train"] and computed["metrics"] == cells[arm]["metrics"]
        untimed = [{k: v for k, v in c["evaluation"].items() if k != "seconds"} for c in (computed, cells[arm])]
        assert untimed[0] == untimed[1]
