"""``lrp study`` benchmark: peak memory (and time) for 50 versus 500 subjects; it should not grow with the count.

    python benchmarks/study.py [--subjects 50,500] [--grid 24,28,24] [--methods lrp:alpha1-beta0,guided_backprop]
                               [--figures] [--threads 1] [--keep DIR]

A synthetic hold-out set of noise volumes (NIfTI on ``--grid``, 3 mm; the AD half with a brighter block;
a covariate column ``volume``), the demo model (DemoCNN3d, 10 epochs on 40 of the volumes, so that both
classes are predicted; saved by ``lrp.train.train``) and an eight-region atlas (the grid's octants,
``lrp.neuro.atlas.Atlas.from_array`` + a label table) are written to a temporary folder. Each size runs
``lrp study`` (``lrp.cli.main``; figures off unless ``--figures``; the covariate correlated with octant1,
1000 permutations; top-4 overlaps) in a fresh process with ``--threads`` intra-op threads, which reports its
own peak resident set size (``VmHWM`` in /proc/self/status) after the imports, after the loop that explains
the subjects (maps written, region rows collected: ``lrp.study._explain_subjects``) and at the end. The table
gives the first, the growth over it by the end of that loop (volumes and explanations: should not grow with
the count) and by the end of the study (the analysis of the region table, whose rows grow with subjects ×
regions × methods), and the study's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_table import print_table, write_octant_atlas

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", default="50,500", help="hold-out set sizes (default: 50,500)")
    parser.add_argument("--grid", default="24,28,24", help="volume shape D,H,W (default: 24,28,24)")
    parser.add_argument("--methods", default="lrp:alpha1-beta0,guided_backprop", help="comma-separated method specs")
    parser.add_argument("--figures", action="store_true", help="also draw the figures and report.html")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the study process (default: 1)")
    parser.add_argument("--keep", help="write the data and outputs here instead of a temporary folder")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return _child(Path(options.child[0]), Path(options.child[1]), options)
    sizes = [int(n) for n in options.subjects.split(",")]
    grid = tuple(int(n) for n in options.grid.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(options.keep or scratch)
        print(f"writing {max(sizes)} volumes of {grid} to {root} ...", file=sys.stderr)
        _make_data(root, max(sizes), grid, options.threads)
        rows = [("subjects", "study s", "peak RSS after imports MiB", "growth while explaining MiB",
                 "growth at the end MiB")]
        rows += [_measure(root, size, options) for size in sizes]
    print(f"\nlrp study, DemoCNN3d on {grid} noise volumes, methods {options.methods}, figures "
          f"{'on' if options.figures else 'off'}, {options.threads} thread(s)")
    print_table(rows)
    return 0


def _make_data(root: Path, count: int, grid: tuple[int, ...], threads: int) -> None:
    """``volumes/sub-XXXX.nii.gz`` (labels alternate HC / AD), ``model/`` (the demo model after 10 epochs on 40
    volumes, saved by ``lrp.train.train`` with ``save_model``) and ``atlas.nii.gz`` + ``atlas.txt`` (octants)."""
    import torch

    from lrp.data import Preprocess, open_source
    from lrp.models import DemoCNN3d
    from lrp.neuro.io import save_image
    from lrp.train import TrainConfig, train

    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / "volumes" / f"sub-{i:04d}.nii.gz"
        if not path.exists():
            volume = rng.random(grid).astype(np.float32)
            volume[2:8, 3:9, 2:8] += i % 2
            save_image(volume, AFFINE, path)
    if not (root / "model" / "model.json").exists():  # trained a little, so that both classes are predicted
        torch.set_num_threads(threads)
        data = open_source(_manifest(root, min(count, 40)), transform=Preprocess(), classes=["HC", "AD"])
        torch.manual_seed(0)
        train(DemoCNN3d(grid), data, None, TrainConfig(epochs=10, lr=1e-3, device="cpu"), out_dir=root / "model",
              progress=False)
    write_octant_atlas(root, grid, AFFINE)


def _manifest(root: Path, count: int) -> Path:
    """``manifest-<count>.csv``: path, label, and a covariate ``volume`` (random)."""
    rng = np.random.default_rng(count)
    path = root / f"manifest-{count}.csv"
    lines = ["path,label,volume"] + [f"volumes/sub-{i:04d}.nii.gz,{('HC', 'AD')[i % 2]},{rng.normal(4000, 300):.1f}"
                                     for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _measure(root: Path, count: int, options: argparse.Namespace) -> tuple:
    """``lrp study`` on ``count`` subjects in a fresh process: (subjects, study s, peak RSS after the imports,
    peak RSS at the end, growth), memory in MiB."""
    out = root / f"out-{count}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh study, not one that reuses maps
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(_manifest(root, count)), str(out),
               "--methods", options.methods]
    command += ["--figures"] if options.figures else []
    finished = subprocess.run(command, check=False, stdout=subprocess.PIPE, env=environment, text=True)
    if finished.returncode:
        raise SystemExit(f"{count} subjects: exit status {finished.returncode}")
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    before, explaining, after = (report[key] / 2**10 for key in ("peak_after_imports", "peak_explaining", "peak"))
    return count, f"{report['seconds']:.1f}", f"{before:.0f}", f"{explaining - before:.0f}", f"{after - before:.0f}"


def _child(data: Path, out: Path, options: argparse.Namespace) -> int:
    """What one measured process does: ``lrp study`` in-process, then its peak memory as a JSON line."""
    import contextlib

    import lrp.study
    import lrp.study_report  # imported before the baseline, with torch and matplotlib
    from lrp.cli import main as run_lrp

    explain_subjects, peaks = lrp.study._explain_subjects, {}

    def explain_and_measure(*args, **kwargs):  # the loop over the subjects, region table built
        result = explain_subjects(*args, **kwargs)
        peaks["explaining"] = _peak_rss_kib()
        return result
    lrp.study._explain_subjects = explain_and_measure
    root = data.parent
    before = _peak_rss_kib()
    started = time.perf_counter()
    arguments = ["study", "--data", str(data), "--model", str(root / "model"), "--out", str(out),
                 "--methods", options.methods, "--atlas", str(root / "atlas.nii.gz"),
                 "--atlas-labels", str(root / "atlas.txt"), "--covariate", "volume", "--covariate-region", "octant1",
                 "--permutations", "1000", "--top-k", "4"] + ([] if options.figures else ["--no-figures"])
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON line
        status = run_lrp(arguments)
    if status:
        return status
    print(json.dumps({"peak_after_imports": before, "peak_explaining": peaks["explaining"], "peak": _peak_rss_kib(),
                      "seconds": time.perf_counter() - started}))
    return 0


def _peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    raise SystemExit(main())
