"""The analysis section of a run config, and seeds added to a run folder that holds work."""

import json

import pytest

from mechunlearn.errors import MechunlearnError
from mechunlearn.experiment import Experiment, load_config
from mechunlearn.experiment.config import ConfigError, from_dict


def test_seeds_added_to_a_run_folder_compute_only_the_new_cells(tiny_grid, tmp_path, one_thread):
    out = tmp_path / "run"
    Experiment(load_config(tiny_grid(seeds=[0])), out).run()
    first = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    assert sorted(first) == ["edit4__all_mlps__s0.json", "edit4__random__s0.json", "edit4__unedited__s0.json"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    more = load_config(tiny_grid(seeds=[0, 1], analysis={"delta": 0.1}))
    Experiment(more, out).run()
    cells = {p.name: p for p in (out / "cells").glob("*.json")}
    assert sorted(cells) == sorted([*first, "edit4__all_mlps__s1.json", "edit4__random__s1.json",
                                    "edit4__unedited__s1.json"])
    assert all(cells[n].read_text() == first[n] and cells[n].stat().st_mtime_ns == stamps[n] for n in first)
    written = json.loads((out / "config.json").read_text())
    assert written["seeds"] == [0, 1] and written["analysis"]["delta"] == 0.1

    changed = load_config(tiny_grid(settings=[{"name": "edit4", "objective": "edit", "forget": 5}]))
    with pytest.raises(MechunlearnError, match="different config"):
        Experiment(changed, out).run()


def test_methods_added_to_a_run_folder_compute_only_their_own_arms(tiny_grid, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    loc = {"n_facts": 6, "probe_facts": 0, "budget": {"match": None, "params": 20000, "rule": "under"}}
    Experiment(load_config(tiny_grid(seeds=[0], localization={**loc, "methods": ["random"]})), out).run()
    first = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in (out / "cells").glob("*.json")}
    assert sorted(first) == ["edit4__random__s0.json", "edit4__unedited__s0.json"]

    training = {"target": None, "per_method": {"all_mlps": {"lr": 2e-4}},
                "default": {"steps": 1, "forget_batch_size": 4, "maintain_batch_size": 4, "general_batch_size": 1,
                            "general_length": 16}}
    more = tiny_grid(seeds=[0], localization={**loc, "methods": ["all_mlps", "random"]}, training=training)
    capsys.readouterr()
    Experiment(load_config(more), out).run()
    said = " ".join(capsys.readouterr().err.split())
    assert "methods added to this run folder (all_mlps) join its default primary family" in said
    cells = {p.name: p for p in (out / "cells").glob("*.json")}
    assert sorted(cells) == ["edit4__all_mlps__s0.json", *first]
    assert all((cells[n].read_text(), cells[n].stat().st_mtime_ns) == first[n] for n in first)
    assert json.loads((out / "config.json").read_text())["localization"]["methods"] == ["all_mlps", "random"]
    assert json.loads(cells["edit4__all_mlps__s0.json"].read_text())["train"]["config"]["lr"] == 2e-4

    declared = tiny_grid(seeds=[0], localization={**loc, "methods": ["all_mlps", "random", "everything"]},
                         training=training, analysis={"against": ["random"]})
    Experiment(load_config(declared), out).run()
    assert "methods added" not in capsys.readouterr().err  # the family stays the one declared
    assert (out / "cells" / "edit4__everything__s0.json").exists()

    dropped = tiny_grid(seeds=[0], localization={**loc, "methods": ["all_mlps"]}, training=training)
    with pytest.raises(MechunlearnError, match=r"different config \(localization.methods differ"):
        Experiment(load_config(dropped), out).run()


def test_settings_run_one_at_a_time_share_one_folder(tiny_grid, tmp_path, one_thread):
    """``--settings``: the folder keeps the whole config, so each subset resumes the same run."""
    two = [{"name": "edit4", "objective": "edit", "forget": 4}, {"name": "unlearn4", "objective": "log1m", "forget": 4}]
    config = load_config(tiny_grid(seeds=[0], settings=two))
    out = tmp_path / "run"
    Experiment(config, out, only=["edit4"]).run()
    cells = lambda: sorted(p.stem for p in (out / "cells").glob("*.json"))  # noqa: E731
    assert cells() == ["edit4__all_mlps__s0", "edit4__random__s0", "edit4__unedited__s0"]
    assert [s["name"] for s in json.loads((out / "config.json").read_text())["settings"]] == ["edit4", "unlearn4"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    Experiment(config, out, only=["unlearn4"]).run()
    assert cells() == ["edit4__all_mlps__s0", "edit4__random__s0", "edit4__unedited__s0",
                       "unlearn4__all_mlps__s0", "unlearn4__random__s0", "unlearn4__unedited__s0"]
    assert all((out / "cells" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    rows = (out / "results.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} >= {"edit4", "unlearn4"}, rows[:3]

    with pytest.raises(MechunlearnError, match=r"unknown setting\(s\) \['edit5'\]"):
        Experiment(config, out, only=["edit5"])
    changed = load_config(tiny_grid(seeds=[0], settings=[two[0], {**two[1], "forget": 5}]))
    with pytest.raises(MechunlearnError, match=r"different config \(settings.unlearn4.forget differ"):
        Experiment(changed, out, only=["edit4"]).run()


def test_a_folder_started_on_some_settings_takes_the_config_that_adds_others(tiny_grid, tmp_path, one_thread):
    one = [{"name": "edit4", "objective": "edit", "forget": 4}]
    out = tmp_path / "run"
    Experiment(load_config(tiny_grid(seeds=[0], settings=one)), out).run()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    more = load_config(tiny_grid(seeds=[0], settings=[*one, {"name": "unlearn4", "objective": "log1m", "forget": 4}]))
    Experiment(more, out).run()
    assert len(list((out / "cells").glob("unlearn4__*.json"))) == 3
    assert all((out / "cells" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    with pytest.raises(MechunlearnError, match=r"different config \(settings.unlearn4 differ"):
        Experiment(load_config(tiny_grid(seeds=[0], settings=one)), out).run()


@pytest.mark.parametrize("analysis, words", [
    ({"primary": ["edit.qa.p_nwe"]}, ["analysis.primary[0]", "edit.qa.p_new"]),
    ({"primary": []}, ["analysis.primary", "empty"]),
    ({"against": ["fact_lookup"]}, ["analysis.against[0]", "other than fact_lookup"]),
    ({"against": ["everything"]}, ["analysis.against[0]", "causal_tracing"]),
    ({"delta": 0}, ["analysis.delta", "> 0"]),
    ({"delta_per_metric": {"lm_los": 0.1}}, ["analysis.delta_per_metric.lm_los", "unknown metric"]),
    ({"alpha": 1.5}, ["analysis.alpha", "between 0 and 1"]),
    ({"power": 0}, ["analysis.power", "between 0 and 1"]),
    ({"delat": 0.1}, ["analysis.delat", "'delta'"]),
])
def test_analysis_config_errors_name_the_key(analysis, words):
    with pytest.raises(ConfigError) as e:
        from_dict({"analysis": analysis})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_analysis_defaults():
    a = from_dict({}).analysis
    assert (a.primary, a.against, a.delta, a.alpha, a.power) == (None, None, 0.05, 0.05, 0.8)
    named = from_dict({"analysis": {"primary": ["relearn.error"], "against": ["random"],
                                    "delta_per_metric": {"lm_loss": 0.02}}}).analysis
    assert named.primary == ("relearn.error",) and named.against == ("random",)
    assert named.delta_per_metric == {"lm_loss": 0.02}
