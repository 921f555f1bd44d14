"""The grid's cells on a local Ray cluster: the same results as one process, and a worker killed
in the middle of a cell leaves it to another."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mechunlearn.experiment.claims import stale

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def config_path(tiny_grid):
    default = {"steps": 6, "forget_batch_size": 4, "maintain_batch_size": 4, "general_batch_size": 1,
               "general_length": 16}
    return tiny_grid(training={"target": None, "default": default})  # cells long enough to be killed inside


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def _run(config_path, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "mechunlearn", "run", str(config_path), "--out", str(out), *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_ray_workers_give_the_results_of_one_process_and_survive_a_killed_worker(config_path, tmp_path):
    alone = _run(config_path, tmp_path / "alone")
    assert alone.wait(timeout=600) == 0, alone.stdout.read()[-3000:]

    ray_run = _run(config_path, tmp_path / "ray", "--workers", "2")
    output, code = ray_run.communicate(timeout=900)[0], ray_run.returncode
    assert code == 0, output[-3000:]
    assert output.count("a worker computed") == 2
    expected = (tmp_path / "alone" / "results.csv").read_text()
    assert (tmp_path / "ray" / "results.csv").read_text() == expected

    killed = tmp_path / "killed"
    run = _run(config_path, killed, "--workers", "2")
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and run.poll() is None:
        for claim in (killed / "cells").glob("*__random__*.claim"):
            try:
                victim = (claim.stem, json.loads(claim.read_text())["pid"])
            except (OSError, ValueError):
                continue
        time.sleep(0.05)
    assert victim is not None, "no worker was seen computing a cell"
    os.kill(victim[1], signal.SIGKILL)  # a worker dies inside a cell
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output[-3000:]
    assert "a worker stopped" in output
    assert (killed / "cells" / f"{victim[0]}.json").exists()
    # the dead worker's presence is left stale, or removed by a process that found itself alone after it
    assert {p.parent.name for p in killed.rglob("*.claim")} <= {"running"}
    assert all(stale(p) for p in killed.rglob("*.claim"))
    assert (killed / "results.csv").read_text() == expected
