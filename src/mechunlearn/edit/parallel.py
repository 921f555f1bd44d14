"""Data parallelism over the trained slices with Accelerate.

Every process holds the whole (frozen) model, draws the same global batch from the same seed,
computes its share, and the trained tensors' gradients are summed over processes before the
optimizer step. Losses are pre-divided by the global batch size, so N processes make exactly
the update one process makes on the whole batch (up to float summation order)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class DataParallel:
    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """In-place sum over processes."""
        if self.world == 1:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
