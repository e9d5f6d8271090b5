"""``lrp explain`` benchmark: throughput and peak memory for 1, 2, 4 processes, and memory for 50 vs 500 volumes.

    python benchmarks/explain.py [--processes 1,2,4] [--volumes 48] [--memory-volumes 50,500]
                                 [--grid 32,38,32] [--workers 1] [--methods lrp:alpha1-beta0] [--keep DIR]

A synthetic set of noise volumes (NIfTI) on ``--grid``, the untrained demo model (DemoCNN3d) and an
eight-region atlas are written to a temporary folder. Each configuration runs in fresh processes
(``torch.distributed.run --standalone`` for several), as ``lrp explain`` would: every rank loads the
model, opens the data, joins the process group and calls ``lrp.streaming.explain_dataset``. The
table gives the loop's throughput (volumes / seconds between two barriers around the loop, on rank 0),
the wall time of the whole command (start-up included), and the peak memory of the process tree
(launcher, ranks, DataLoader workers): the largest sum of PSS (proportional set size, so pages shared
after fork count once) sampled every 50 ms from /proc. The intra-op threads of each rank are
``cores // processes`` (at least 1), so every configuration uses the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_table import print_table, write_octant_atlas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="process counts for the throughput table")
    parser.add_argument("--volumes", type=int, default=48, help="volumes per throughput run (default: 48)")
    parser.add_argument("--memory-volumes", default="50,500", help="data set sizes for the memory comparison")
    parser.add_argument("--grid", default="32,38,32", help="volume shape D,H,W (default: 32,38,32)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per process (default: 1)")
    parser.add_argument("--methods", default="lrp:alpha1-beta0", help="comma-separated method specs")
    parser.add_argument("--keep", help="write the data and outputs here instead of a temporary folder")
    parser.add_argument("--rank-run", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.rank_run:
        return _rank_run(Path(options.rank_run[0]), Path(options.rank_run[1]), options)
    processes = [int(n) for n in options.processes.split(",")]
    sizes = [int(n) for n in options.memory_volumes.split(",")]
    grid = tuple(int(n) for n in options.grid.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(options.keep or scratch)
        print(f"writing {max(sizes + [options.volumes])} volumes of {grid} to {root} ...", file=sys.stderr)
        _make_data(root, max(sizes + [options.volumes]), grid)
        rows = [("processes", "volumes", "threads/process", "loop volumes/s", "wall s", "peak PSS MiB")]
        for count in processes:
            rows.append(_measure(root, count, options.volumes, options))
        for size in sizes:
            rows.append(_measure(root, 1, size, options))
    print(f"\nlrp explain, DemoCNN3d on {grid} noise volumes, methods {options.methods}, {options.workers} DataLoader "
          f"worker(s) per process, {os.cpu_count()} CPU cores")
    print_table(rows)
    return 0


def _make_data(root: Path, count: int, grid: tuple[int, ...]) -> None:
    """``volumes/sub-XXXX.nii.gz`` (labels alternate HC / AD) with one manifest per data set size (written
    later), ``model/`` (the demo model) and ``atlas.nii.gz`` + ``atlas.txt`` (eight octants)."""
    import nibabel as nib
    import torch

    from lrp.models import DemoCNN3d
    from lrp.train import save_model

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    rng = np.random.default_rng(0)
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = root / "volumes" / f"sub-{i:04d}.nii.gz"
        if not path.exists():
            nib.save(nib.Nifti1Image(rng.normal(size=grid).astype(np.float32), affine), path)
    torch.manual_seed(0)
    model = DemoCNN3d(grid)
    save_model(model, root / "model", architecture={"name": "DemoCNN3d", "kwargs": {"input_shape": list(grid)}},
               preprocessing={"minmax": True, "mask": None, "grid": None}, class_names=["HC", "AD"], metrics=None)
    write_octant_atlas(root, grid, affine)


def _manifest(root: Path, count: int) -> Path:
    path = root / f"manifest-{count}.csv"
    lines = ["path,label"] + [f"volumes/sub-{i:04d}.nii.gz,{('HC', 'AD')[i % 2]}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _measure(root: Path, processes: int, volumes: int, options: argparse.Namespace) -> tuple:
    """One configuration in fresh processes: (processes, volumes, threads, loop volumes/s, wall s, peak PSS MiB)."""
    out = root / f"out-{processes}p-{volumes}v"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    script = [str(Path(__file__).resolve()), "--rank-run", str(_manifest(root, volumes)), str(out),
              "--workers", str(options.workers), "--methods", options.methods]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *launcher, *script], stdout=subprocess.PIPE, env=env, text=True)
    peak = _PeakMemory(process.pid)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    peak.stop()
    if process.returncode:
        raise SystemExit(f"{processes} process(es), {volumes} volumes: exit status {process.returncode}")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return processes, volumes, threads, f"{volumes / seconds:.1f}", f"{wall:.1f}", f"{peak.value / 2**20:.0f}"


def _rank_run(data: Path, out: Path, options: argparse.Namespace) -> int:
    """What each rank does: the work of ``lrp explain``, with the loop timed between barriers."""
    from lrp.data import Preprocess, open_source
    from lrp.distributed import world
    from lrp.neuro.atlas import load_atlas
    from lrp.streaming import explain_dataset
    from lrp.study import study_grid
    from lrp.train import load_model

    root = data.parent
    with world("cpu") as processes:
        model, info = load_model(root / "model")
        preprocess = Preprocess.from_dict(info["preprocessing"])
        dataset = open_source(data, transform=preprocess, classes=info["class_names"])
        grid = study_grid(dataset, preprocess, None)
        atlas = load_atlas(root / "atlas.nii.gz", root / "atlas.txt").resample_to(grid)
        processes.barrier()
        started = time.perf_counter()
        explain_dataset(model, dataset, options.methods.split(","), out, grid=grid, target=1, atlas=atlas,
                        class_names=info["class_names"], num_workers=options.workers, progress=False,
                        world=processes)
        processes.barrier()
        if processes.is_main:
            print(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


class _PeakMemory:
    """The largest total PSS (bytes) of a process and its descendants, sampled every 50 ms in a thread."""

    def __init__(self, pid: int):
        self.pid, self.value, self._running = pid, 0, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._thread.join()

    def _sample(self) -> None:
        while self._running:
            self.value = max(self.value, sum(_pss(pid) for pid in _tree(self.pid)))
            time.sleep(0.05)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/<tid>/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                queue += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _pss(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
