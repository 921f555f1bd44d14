"""The demo's quick mode on the embedded model: the whole pipeline end to end."""

import json
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.integration
def test_quick_demo_runs_end_to_end_and_writes_the_report(tmp_path, gemma):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "mechunlearn", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(out / "results.csv")
    assert set(table.method) == {"fact_lookup", "causal_tracing", "all_mlps", "unedited"}
    before = table.set_index("method").loc["unedited"]
    flu = table.set_index("method").loc["fact_lookup"]
    print(table.T)
    assert flu["edit.train.p_new"] > before["edit.train.p_new"] + 0.3  # the edit took
    assert flu["n_params"] > 0 and before["n_params"] == 0
    data = json.loads((out / "data.json").read_text())
    assert data["known"]["known"] > 0 and len(data["localization_facts"]["s0"]) == 16
    assert "FLU" in (out / "report.html").read_text()
    assert (out / "localizations" / "fact_lookup__s0.probes.png").exists()
