"""The Trainer's batches through torch's DataLoader, in an order that is a pure function of (seed, step).

Sample k of the infinite stream (epochs of seeded permutations, `fastscale.data.packing.rows_for`) goes
to global step k // train_batch_size; within a step, rank r's micro-batch m holds the samples
first = step * train_batch_size + (m * world_size + r) * micro, ..., first + micro - 1. `StepSampler`
yields exactly these index lists, starting at any step, so a resumed run reads the rows the
uninterrupted one read. The DataLoader collates in worker processes (by default one on a GPU and none
on a CPU: `worker_count`; their RNG seeded from a generator of their own, so building the loader
leaves the global generator, and with it dropout, untouched), prefetches, and pins host memory when
the batches go to a GPU, so the copy to the device overlaps compute (non_blocking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from fastscale.data.packing import rows_for


@dataclass(frozen=True)
class Layout:
    """Where a rank's micro-batches sit in the global sample stream."""

    n_rows: int
    seed: int
    batch_size: int  # train_batch_size: samples per optimizer step over all ranks
    micro: int  # train_micro_batch_size_per_gpu
    accumulation: int  # gradient_accumulation_steps
    world_size: int
    rank: int

    def indices(self, step: int, micro: int) -> np.ndarray:
        """Row indices of this rank's micro-batch `micro` of optimizer step `step` (0-based)."""
        first = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro
        return rows_for(self.n_rows, self.seed, first, self.micro)


class StepSampler(torch.utils.data.Sampler):
    """A batch sampler: this rank's micro-batches of steps start .. stop - 1, in training order."""

    def __init__(self, layout: Layout, start: int, stop: int) -> None:
        self.layout, self.start, self.stop = layout, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            for micro in range(self.layout.accumulation):
                yield self.layout.indices(step, micro).tolist()

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.layout.accumulation


def batch_loader(dataset, sampler: StepSampler, collate_fn: Callable, *, workers: int, prefetch: int, pin_memory: bool, seed: int):
    """A DataLoader over `sampler`'s micro-batches (workers=0: collated in this process)."""
    options = {"prefetch_factor": prefetch, "persistent_workers": False} if workers else {}
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )


def worker_count(requested: int | None, device: torch.device) -> int:
    """train.data_workers, or when it is None: none on a CPU, one on a GPU. Receiving a batch from a
    worker (each tensor handed over through shared memory) costs the training process more than
    collating a small batch itself, and less for a large one (benchmarks/bench_loader.py). A CPU trains
    small models on small batches, so there the batch is collated in the process (set data_workers for
    large ones); on a GPU the worker keeps the collation off the process that feeds the device."""
    if requested is not None:
        return requested
    return 0 if device.type == "cpu" else 1


def to_device(batch, device: torch.device):
    """batch (tensors in dicts, tuples and lists) on device; from pinned memory the copy is asynchronous."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch
