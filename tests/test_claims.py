"""Several processes on one run folder: every cell is computed once, a dead owner's claim is taken
over, and the results are those of one process alone."""

import json
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from mechunlearn.experiment import Experiment, load_config
from mechunlearn.experiment.claims import STALE, claim, stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_claim(path, host=None, pid=None, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid or os.getpid(), "started": "x"}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def test_a_claim_is_held_once_and_taken_over_only_from_a_dead_or_silent_owner(tmp_path):
    path = tmp_path / "c.claim"
    first = claim(path)
    assert first is not None and claim(path) is None  # held by a live owner (this process)
    first.release()
    assert not path.exists() and claim(path) is not None

    dead = tmp_path / "dead.claim"
    _fake_claim(dead, pid=_dead_pid())
    assert stale(dead) and claim(dead) is not None
    assert json.loads(dead.read_text())["pid"] == os.getpid()

    elsewhere = tmp_path / "elsewhere.claim"
    _fake_claim(elsewhere, host="another-host", pid=1)
    assert not stale(elsewhere) and claim(elsewhere) is None  # another host's live heartbeat
    os.utime(elsewhere, (time.time() - STALE - 1, time.time() - STALE - 1))
    assert stale(elsewhere) and claim(elsewhere) is not None


@pytest.fixture(scope="module")
def config_path(tiny_grid):
    return tiny_grid()


def _computed(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if " · seed " in line]


def test_two_processes_started_at_once_compute_every_cell_exactly_once(config_path, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "mechunlearn", "run", str(config_path), "--out", str(out)]
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [r.communicate(timeout=600)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    done = [_computed(o) for o in outputs]
    every = [f"edit4 · {m} · seed {s}" for s in (0, 1) for m in ("unedited", "random", "all_mlps")]
    assert sorted(done[0] + done[1]) == sorted(every)  # each cell by exactly one of them
    assert sum("scoring facts" in o for o in outputs) == 1  # the known-facts filter too; the other reads it
    assert not list(out.rglob("*.claim")) and (out / "report.html").exists()

    alone = tmp_path / "alone"
    single = subprocess.run([*args[:-1], str(alone)], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout[-2000:]
    shared, sequential = pd.read_csv(out / "results.csv"), pd.read_csv(alone / "results.csv")
    pd.testing.assert_frame_equal(shared, sequential, check_exact=False, atol=1e-6)


def test_a_stale_claim_left_by_a_killed_process_is_taken_over(config_path, tmp_path, one_thread):
    out = tmp_path / "run"
    left = out / "cells" / "edit4__random__s1.claim"
    _fake_claim(left, pid=_dead_pid())
    _fake_claim(out / "localizations" / "s1.claim", pid=_dead_pid())
    Experiment(load_config(config_path), out).run()
    assert (out / "cells" / "edit4__random__s1.json").exists() and not list(out.rglob("*.claim"))
    assert (out / "report.html").exists()


def test_a_cell_whose_owner_dies_after_this_process_passed_it_is_taken_over(config_path, tmp_path, one_thread,
                                                                             monkeypatch):
    out = tmp_path / "run"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _fake_claim(out / "cells" / "edit4__all_mlps__s0.claim", pid=owner.pid)
    experiment = Experiment(load_config(config_path), out)
    passes = []
    original = experiment.grid_pass

    def grid_pass(*args):
        original(*args)
        passes.append(sorted(p.name for p in (out / "cells").glob("*.json")))
        owner.kill()  # the other process dies holding the cell, after this one went past it
        owner.wait()

    monkeypatch.setattr(experiment, "grid_pass", grid_pass)
    experiment.run()
    assert "edit4__all_mlps__s0.json" not in passes[0] and len(passes) == 2
    assert "edit4__all_mlps__s0.json" in passes[1] and len(passes[1]) == 6
    assert (out / "report.html").exists() and not list(out.rglob("*.claim"))


def test_a_process_never_deletes_the_temporary_files_of_another_live_one(config_path, tmp_path, one_thread):
    out = tmp_path / "run"
    out.mkdir()
    partial = out / "data.json.abcd1234.tmp"  # a live process's write in progress
    partial.write_text("{")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _fake_claim(out / "running" / f"{socket.gethostname()}-{owner.pid}.claim", pid=owner.pid)
        Experiment(load_config(config_path), out).run(report=False)
        assert partial.exists()
    finally:
        owner.kill()
        owner.wait()
    Experiment(load_config(config_path), out).run()  # alone now: the dead process's leftovers go
    assert not partial.exists() and not list(out.rglob("*.claim"))
