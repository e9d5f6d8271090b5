"""Large CPU tensors on transparent huge pages.

Memory that a process gets from the system arrives as zeroed 4 KiB pages, one page fault each when first
written. glibc's malloc hands large blocks back to the system when they are freed (every block over 32 MiB,
and the top of its heap), so a process that explains input after input faults most of its tensors in again
on every call: the paper's 3D CNN on one volume took about 700 thousand page faults per ``epsilon`` call
and a million per gradient, half of their time on this project's CPU machine.

PyTorch's CPU allocator can place every tensor of 2 MiB or more on 2 MiB pages instead (page-aligned,
and ``madvise(MADV_HUGEPAGE)``), when the environment variable ``THP_MEM_ALLOC_ENABLE`` is 1: a fault per
2 MiB instead of per 4 KiB. PyTorch reads the variable once, at the process's first CPU tensor of any
size, so :func:`enable_huge_pages` works only before that. The ``lrp`` command calls it before its subcommand
runs (``lrp bench`` only with ``--huge-pages``). Needs Linux with transparent huge pages set to ``madvise``
or ``always`` (``/sys/kernel/mm/transparent_hugepage/enabled``); elsewhere nothing changes.

Where it helps: 3D volumes, whose activations are hundreds of MiB (the paper's model, gradient and every
composite: about twice as fast, in the same memory). 2D networks at 224×224 keep most tensors under 32 MiB,
in malloc's heap, and gain nothing; ResNet-50 at batch 8 ran up to 15 % slower and noisier in single runs,
as the kernel compacts memory to find free huge pages.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import torch

__all__ = ["ENVIRONMENT_VARIABLE", "enable_huge_pages", "huge_pages_active", "kernel_mode"]

ENVIRONMENT_VARIABLE = "THP_MEM_ALLOC_ENABLE"
"""PyTorch's switch for huge pages in its CPU allocator (``1`` on, ``0`` off)."""

HUGE_PAGE_BYTES = 2 * 2**20
"""The huge page size, and the smallest allocation PyTorch puts on huge pages."""

_KERNEL_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_mode() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), None where there is none
    to read (not Linux, or no THP support)."""
    try:
        text = _KERNEL_SETTING.read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if chosen else None


def huge_pages_active() -> bool:
    """Whether PyTorch puts CPU tensors of 2 MiB or more on huge pages in this process, and the kernel grants
    them. Decided by three probe allocations: for huge pages PyTorch aligns them to a page, which ordinary
    ones are not (64 bytes past a page boundary when malloc maps them, by chance one in 64 from its heap).
    Like any allocation, the probes fix PyTorch's choice for the rest of the process."""
    if kernel_mode() not in ("always", "madvise"):
        return False
    probes = [torch.empty(HUGE_PAGE_BYTES, dtype=torch.uint8) for _ in range(3)]
    return all(probe.data_ptr() % mmap.PAGESIZE == 0 for probe in probes)


def enable_huge_pages() -> bool:
    """Ask PyTorch to put CPU tensors of 2 MiB or more on huge pages, unless ``THP_MEM_ALLOC_ENABLE`` is set
    already (then that setting stands). Takes effect only if the process has not yet made such a tensor.
    Processes started afterwards inherit the setting. Returns :func:`huge_pages_active`."""
    os.environ.setdefault(ENVIRONMENT_VARIABLE, "1")
    return huge_pages_active()
