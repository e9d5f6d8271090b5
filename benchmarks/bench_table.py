"""A markdown table printer shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""
from __future__ import annotations

__all__ = ["print_table"]


def print_table(rows: list[tuple]) -> None:
    """Print ``rows`` (the first is the header) as a markdown table with right-aligned columns."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("| " + " | ".join(f"{cell!s:>{width}}" for cell, width in zip(row, widths)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
