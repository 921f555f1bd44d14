"""Where the time of a cell goes: code marks its stages (``with stage("relearning step"):``);
while a :class:`StageRecorder` is recording, each stage's wall time and matmul FLOPs are summed,
exclusive of the stages nested in it (an ``absorb`` stage keeps its nested stages' time as its own).
Without a recorder a stage costs one global lookup."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_recorder: StageRecorder | None = None


@dataclass
class StageTotals:
    seconds: float = 0.0
    flops: int = 0
    calls: int = 0


@dataclass
class StageRecorder:
    """``flop_counter``: a running ``torch.utils.flop_counter.FlopCounterMode`` to read FLOPs from."""

    flop_counter: object | None = None
    totals: dict[str, StageTotals] = field(default_factory=dict)
    _stack: list[list] = field(default_factory=list)  # [name, start time, start flops, nested time, nested flops]
    _absorbing: int = 0

    def _flops(self) -> int:
        return self.flop_counter.get_total_flops() if self.flop_counter is not None else 0

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), self._flops(), 0.0, 0])

    def exit(self) -> None:
        name, start, flops0, nested_s, nested_f = self._stack.pop()
        seconds, flops = time.perf_counter() - start, self._flops() - flops0
        total = self.totals.setdefault(name, StageTotals())
        total.seconds += seconds - nested_s
        total.flops += flops - nested_f
        total.calls += 1
        if self._stack:
            self._stack[-1][3] += seconds
            self._stack[-1][4] += flops

    @contextmanager
    def recording(self) -> Iterator[StageRecorder]:
        global _recorder
        previous, _recorder = _recorder, self
        try:
            yield self
        finally:
            _recorder = previous


@contextmanager
def stage(name: str, absorb: bool = False) -> Iterator[None]:
    recorder = _recorder
    if recorder is None or recorder._absorbing:
        yield
        return
    recorder.enter(name)
    recorder._absorbing += absorb
    try:
        yield
    finally:
        recorder._absorbing -= absorb
        recorder.exit()
