"""Claims on a run folder's work, so that several processes (a SLURM job array, torchrun ranks, a
shell loop) can share one folder and compute every cell once.

A claim is a file created with O_EXCL that holds its owner's host, pid and start time, and whose
modification time a heartbeat thread refreshes. A claim is stale when its owner is dead (same
host, no such process) or silent for ``STALE`` seconds (any host); a stale claim is taken over
under a second O_EXCL file, so that two processes never both take it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

HEARTBEAT = 20.0
STALE = 180.0


class Claim:
    def __init__(self, path: Path):
        self.path = path
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(path: Path) -> str:
    info = _read(path)
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {info.get('started', '?')}"


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another host: only its silence tells
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def stale(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    info = _read(path)
    if not info:  # being written this instant, or a wreck
        return age > HEARTBEAT
    return age > STALE or not _alive(info)


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner(), f)
    return True


def claim(path: Path) -> Claim | None:
    """The claim at ``path``, or None while a live owner holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path):
            return Claim(path)
        if not stale(path):
            return None
        takeover = path.with_name(path.name + ".takeover")
        if stale(takeover):
            takeover.unlink(missing_ok=True)
        if _create(takeover):
            try:
                if stale(path):  # still the dead owner's: only the takeover holder removes it
                    path.unlink(missing_ok=True)
            finally:
                takeover.unlink(missing_ok=True)
        else:
            time.sleep(0.2)
    return None


def wait_for(path: Path, poll: float = 1.0) -> Claim:
    """The claim at ``path``, waiting while another process holds it."""
    while (held := claim(path)) is None:
        time.sleep(poll)
    return held


@contextlib.contextmanager
def presence(folder: Path):
    """This process's claim of being at work in a run folder, held while it runs; yields whether
    it is the only live one (so that it may clean up what dead ones left)."""
    held = wait_for(folder / f"{socket.gethostname()}-{os.getpid()}.claim")
    others = [p for p in folder.glob("*.claim") if p != held.path]
    alone = all(stale(p) for p in others)
    if alone:
        for p in others:
            p.unlink(missing_ok=True)
    try:
        yield alone
    finally:
        held.release()
