"""Run the mechunlearn CLI and SIGKILL the process at a chosen point (the resume tests use it):

    python tests/kill_at.py {cell,cell-file,report} N mechunlearn-arguments...

``cell``: inside the Nth cell computed by this process (trained, being evaluated);
``cell-file``: while the Nth cell file is written (half its bytes in the temporary file, before
the rename); ``report``: while the report writes verdicts.json (results.csv already written)."""

import os
import signal
import sys

import mechunlearn.experiment.runner as runner
import mechunlearn.io
from mechunlearn.cli import main

point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = 0


def due() -> bool:
    global seen
    seen += 1
    return seen == nth


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if point == "cell":
    evaluate_run = runner.evaluate_run

    def evaluate_run_or_die(*args, **kwargs):
        if due():
            die()
        return evaluate_run(*args, **kwargs)

    runner.evaluate_run = evaluate_run_or_die
else:
    def wanted(path: str) -> bool:  # the temporary file of a cell or of verdicts.json
        folder, name = os.path.split(path)
        return os.path.basename(folder) == "cells" if point == "cell-file" else name.startswith("verdicts.json")

    class KillingOS:
        """``os`` for mechunlearn.io, whose fsync of a chosen temporary file halves it and dies."""

        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd: int) -> None:
            if wanted(os.readlink(f"/proc/self/fd/{fd}")) and due():
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                die()
            os.fsync(fd)

    mechunlearn.io.os = KillingOS()

main(argv)
