"""Atomic writes and what a killed writer leaves behind."""

import os
import signal
import subprocess
import sys

from mechunlearn.io import remove_partial_writes, write_text_atomic


def test_a_writer_killed_before_the_rename_leaves_the_old_file_and_one_partial_temp(tmp_path):
    target = tmp_path / "cells" / "a.json"
    write_text_atomic(target, "old")
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
import mechunlearn.io as io
io.os = type("OS", (), {{"__getattr__": lambda self, n: getattr(os, n),
                        "replace": lambda self, a, b: os.kill(os.getpid(), signal.SIGKILL)}})()
io.write_text_atomic({str(target)!r}, "new")
"""])
    assert killed.returncode == -signal.SIGKILL
    assert target.read_text() == "old"
    partial = [p for p in target.parent.iterdir() if p != target]
    assert len(partial) == 1 and partial[0].read_text() == "new"

    mine = tmp_path / "notes.tmp"  # a user's own file of that suffix is not ours to delete
    mine.write_text("keep")
    assert remove_partial_writes(tmp_path) == partial
    assert sorted(os.listdir(target.parent)) == ["a.json"] and mine.read_text() == "keep"
