"""Ranks, shards and sums across the processes of PyTorch's launcher (``torchrun``), and the same code in one process.

Under ``torchrun --nproc_per_node N [--nnodes M ...] ...`` every process finds RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment. :func:`world` joins the default process
group (gloo for CPU work, nccl for CUDA) when WORLD_SIZE > 1 and leaves it on exit; without the
launcher it gives a world of one process, where every collective returns at once.

    with world("cuda") as w:
        model.to(w.device("cuda"))          # cuda:<LOCAL_RANK>
        mine = w.shard(len(data))           # positions rank, rank + N, rank + 2N, ...
        w.sum(counts)                       # element-wise sum over all ranks, in place
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["COLLECTIVE_TIMEOUT", "World", "world"]

COLLECTIVE_TIMEOUT = timedelta(hours=24)
"""How long a rank waits at a collective for the others: a rank whose shard was already finished
(a resumed run) waits for the slowest one, which can take hours on a large cohort."""


@dataclass(frozen=True)
class World:
    """This process's place among the launched processes: ``rank`` of ``size``, ``local_rank`` on its
    machine, and the process-group ``backend`` ("gloo", "nccl"; None in a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that merges tables and writes shared outputs."""
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This rank's share of positions ``0..count-1``: every ``size``-th from ``rank`` (no position
        repeated, none left out; shard lengths differ by at most one)."""
        return range(self.rank, count, self.size)

    def device(self, requested: str | torch.device) -> torch.device:
        """``requested`` for this rank: "auto" = CUDA when available, else CPU; a bare "cuda" becomes
        ``cuda:<local_rank>`` so that the processes of one machine use one GPU each."""
        name = str(requested)
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.backend is not None:
            dist.barrier()

    def sum(self, array: np.ndarray) -> np.ndarray:
        """Replace ``array`` (a C-contiguous numeric numpy array) by its element-wise sum over all ranks,
        on every rank; returns it. Every rank must call this with arrays of one shape and dtype."""
        if self.backend is None:
            return array
        tensor = torch.from_numpy(array)  # shares memory with ``array``
        if self.backend == "nccl":
            on_device = tensor.to(torch.device("cuda", self.local_rank))
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor)
        return array

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.backend is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextmanager
def world(device: str | torch.device = "cpu") -> Iterator[World]:
    """The launched processes as a :class:`World`, joined for the duration of the ``with`` block.

    WORLD_SIZE > 1 (set by torchrun): joins the default process group with the ``env://`` settings of
    the launcher, backend nccl when ``device`` is CUDA (each process on ``cuda:<LOCAL_RANK>``), else
    gloo, and leaves it on exit. A process group that the caller already joined is used and left
    joined. Otherwise: a world of one process.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World()
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        yield World(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
        return
    backend = "nccl" if World(local_rank=local_rank).device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield World(rank, size, local_rank, backend)
    finally:
        dist.destroy_process_group()
