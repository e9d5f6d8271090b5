"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``): a markdown table printer
and the eight-region test atlas."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["print_table", "write_octant_atlas"]


def print_table(rows: list[tuple]) -> None:
    """Print ``rows`` (the first is the header) as a markdown table with right-aligned columns."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("| " + " | ".join(f"{cell!s:>{width}}" for cell, width in zip(row, widths)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def write_octant_atlas(root: Path, grid: Sequence[int], affine: np.ndarray) -> None:
    """``root/atlas.nii.gz`` + ``root/atlas.txt``: the eight octants of ``grid`` as regions 1-8 (octant1-8)."""
    import nibabel as nib

    octants = np.indices(grid).transpose(1, 2, 3, 0) >= np.array(grid) // 2
    labels = (1 + octants @ np.array([1, 2, 4])).astype(np.int32)
    nib.save(nib.Nifti1Image(labels, affine), root / "atlas.nii.gz")
    (root / "atlas.txt").write_text("".join(f"{i} octant{i}\n" for i in range(1, 9)))
