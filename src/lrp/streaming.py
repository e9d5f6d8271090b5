"""Explaining a whole data set in one streaming pass, resumable and across processes: ``lrp explain``.

data → DataLoader workers read and preprocess the next volumes (or read back a finished subject's
maps) → model: prediction and one relevance map per method → ``maps/<method>/<subject>.nii.gz`` →
region rows (with an atlas) and running group sums → tables in data order, group mean maps.

Outputs in ``out`` (the layout of ``lrp study``, so ``lrp regions`` and ``lrp study`` read them; every
file is written to a temporary name in its folder and renamed):

- ``maps/<method label>/<subject>.nii.gz``: float32 relevance on the model's grid (``grid`` affine)
- ``predictions.csv``: subject, patient, label (-1 = unknown), prediction, prob_<class>..., group_true,
  group_pred, outcome (TP/TN/FP/FN when label and prediction are ``positive`` or ``negative``, else empty)
- ``regions.csv`` (with an atlas): :data:`lrp.neuro.regions.STATS_COLUMNS` + method; rows by subject
  (data order), then method
- ``errors.csv``: subject, method ("" = the input could not be read), error
- ``group_means/<method label>_<group>.nii.gz``: the mean map of each true class (e.g. AD, HC), of
  TP/TN/FP/FN when ``positive`` and ``negative`` are classes, and ``predicted-<class>`` for subjects
  without a label
- ``explain.json``: the settings (model fingerprint, target, classes, grid, preprocessing, methods)
- ``.explain/records/<subject>.json``: the prediction of each explained subject (what a rerun needs to
  skip it); ``.explain/parts/``: table rows per rank while running

Resuming: a subject is finished when its record and the maps of all methods exist and are valid
(readable, on the grid, finite). A rerun skips finished subjects without reading their input: a
worker reads their maps back, from which their region rows and group sums are recomputed exactly (the
maps are float32, as computed), so tables and group means equal those of an uninterrupted run. The
rest is (re)computed; maps of a subject that are already valid are kept. Temporary files left by a
killed run are deleted first. A rerun with another model, target, classes, grid or preprocessing is
refused (``explain.json``); other methods may be added.

Memory: one batch of volumes and maps in the main process, two items per worker in flight; group sums
of methods × (true class, predicted class) cells × grid in float64, whatever the number of subjects;
table rows go to per-rank part files that rank 0 merges line by line.

Processes: under ``torchrun``, rank r explains subjects r, r + N, ... (see :mod:`lrp.distributed`);
after the loop the counts and group sums are summed over ranks and rank 0 merges the tables. The
output folder must be one file system seen by every rank.

Exactness: with ``batch_size=1`` a subject's map depends on nothing else, so maps and tables are the
same for any number of processes and any number of interruptions. Group sums are float64 sums in data
order within a rank: identical after interruptions; across process counts the shards' sums are added in
another order, which can change the float32 group means in the last bit.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import re
import shutil
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .catalog import MethodSpec, parse_method
from .data import VolumeDataset
from .distributed import World
from .errors import DataError, LRPError, TargetError
from .files import atomic_path, write_text
from .neuro.atlas import Atlas
from .neuro.cohort import OUTCOMES, assign_groups
from .neuro.io import load_volume, save_image
from .neuro.regions import AFFINE_TOLERANCE_MM, STATS_COLUMNS, region_stats
from .restore import borrowed

__all__ = ["KILL_AFTER_WRITES", "ExplainResult", "GroupSums", "explain_dataset"]

SETTINGS, STATE, RECORDS, PARTS = "explain.json", ".explain", ".explain/records", ".explain/parts"
KILL_AFTER_WRITES = "LRP_EXPLAIN_TEST_KILL_AFTER"
"""Test hook: with this environment variable set to k, a process kills itself (SIGKILL) right after
writing its k-th file (maps and records in data order, then the tables, then the group means), as a
crash would."""

_ERROR_COLUMNS = ["subject", "method", "error"]
_REGION_COLUMNS = [*STATS_COLUMNS, "method"]
_TEMPORARY = re.compile(r"^\..+\.tmp(\.[^.]+)*$")  # names made by lrp.files.atomic_path


@dataclass
class ExplainResult:
    """What :func:`explain_dataset` did. Counts are over all ranks: ``done`` subjects were (partly)
    computed, ``skipped`` ones were finished before, ``failed`` ones are in errors.csv. ``tables``
    (predictions, errors, regions) and ``group_means`` ({method: {group: path}}) are filled on rank 0;
    ``group_sums`` holds the sums over all ranks."""

    out: Path
    methods: list[str]
    done: int
    skipped: int
    failed: int
    tables: dict[str, Path]
    group_means: dict[str, dict[str, Path]]
    group_sums: GroupSums

    def summary(self) -> str:
        """``done N, skipped M, failed K``."""
        return f"done {self.done}, skipped {self.skipped}, failed {self.failed}"

    def read(self, name: str) -> pd.DataFrame:
        """The table ``name`` ("predictions", "regions", "errors") as written (rank 0 only)."""
        if name not in self.tables:
            raise KeyError(f"no table {name!r} on this rank; written: {sorted(self.tables)}")
        return pd.read_csv(self.tables[name], dtype={"subject": str, "patient": str}, keep_default_na=False,
                           na_values=[""])


def explain_dataset(model: nn.Module, data: VolumeDataset, methods: Sequence[str | MethodSpec], out: str | Path, *,
                    grid: tuple[Sequence[int], np.ndarray], target: int | None = None, atlas: Atlas | None = None,
                    class_names: Sequence[str] | None = None, positive: str = "AD", negative: str = "HC",
                    batch_size: int = 1, num_workers: int = 2, progress: bool = True, world: World | None = None,
                    settings: dict[str, Any] | None = None, start: str = "probability") -> ExplainResult:
    """Explain every subject of ``data`` with every method, streaming; see the module docstring for the outputs.

    model: maps x (B, 1, D, H, W) to logits (B, K), on the device to run on (it is left unchanged).
    data: items x (1, D, H, W) on ``grid``; labels are indices into ``class_names`` (default: the data's).
    methods: method specs (:func:`lrp.catalog.parse_method`), e.g. ``["lrp:alpha1-beta0", "guided_backprop"]``.
    grid: (shape (D, H, W), 4×4 affine) of the model's input, e.g. from :func:`lrp.study.study_grid`.
    target: the explained class (the paper: 1, the disease) or None = each subject's prediction.
    atlas: on ``grid``, for regions.csv (None: no region table). positive, negative: class names of
    disease and controls for the outcome groups. batch_size: subjects per forward/backward pass (1 keeps
    results independent of how subjects are batched). num_workers: DataLoader processes reading ahead.
    world: this process's rank (default: a single process). settings: more entries for explain.json
    (a rerun with different values is refused), e.g. where the model came from. start: what LRP
    distributes, the class's softmax ``"probability"`` (as ``lrp study`` and the paper) or its ``"logit"``
    (see :meth:`lrp.catalog.MethodSpec.explainer`).
    """
    world = world or World()
    out = Path(out)
    specs = _unique(methods)
    shape, affine = tuple(int(d) for d in grid[0]), np.asarray(grid[1], dtype=np.float64)
    class_names = [str(name) for name in (class_names or data.class_names or [])]
    _check_arguments(class_names, target, atlas, shape, affine, batch_size, num_workers)
    labels = [spec.label for spec in specs]
    problem = None
    if world.is_main:
        try:
            _prepare(out, _settings(model, data, labels, target, class_names, shape, affine,
                                    {"start": start, **(settings or {})}))
        except (LRPError, OSError) as error:
            problem = str(error)
    problem = world.from_main(problem)  # every rank waits for the cleanup, and fails alike
    if problem is not None:
        raise DataError(problem)

    run = _Run(model, data, specs, out, (shape, affine), target, atlas, class_names, positive, negative, start)
    tasks = _SubjectTasks(data, world.shard(len(data)), out, labels, shape, affine, len(class_names))
    loader = DataLoader(tasks, batch_size=None, num_workers=num_workers,
                        pin_memory=run.device.type == "cuda")
    counts = {"done": 0, "skipped": 0, "failed": 0}
    title = "explaining" if world.size == 1 else f"explaining (rank {world.rank}/{world.size})"
    with _open_parts(out / PARTS, world, run.tables) as parts, tqdm(
            total=len(tasks), desc=title, unit="subject", position=world.rank, disable=not progress) as bar:
        for batch in _chunks(loader, batch_size):
            for outcome in run.process(batch, parts):
                counts[outcome] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(len(batch))
    totals = world.sum(np.array(list(counts.values()), dtype=np.int64))
    run.sums.reduce(world)
    tables, group_means = {}, {}
    if world.is_main:
        tables = _merge_tables(out, world.size, run.tables)
        group_means = _save_group_means(run.sums, affine, out / "group_means", positive, negative)
        shutil.rmtree(out / PARTS, ignore_errors=True)
    return ExplainResult(out, labels, *(int(n) for n in totals), tables, group_means, run.sums)


class GroupSums:
    """Running sums of maps per method and cell (true class, predicted class), float64, and their counts.

    methods: method labels; labels: the true class indices that occur (-1 = unknown); class_names: the
    K classes; shape: the maps' grid. A cell's sum is allocated when its first map is added, so memory
    is at most methods × cells × grid, whatever the number of subjects.
    """

    def __init__(self, methods: Sequence[str], labels: Iterable[int], class_names: Sequence[str],
                 shape: Sequence[int]):
        self.methods = list(methods)
        self.class_names = [str(name) for name in class_names]
        self.shape = tuple(int(d) for d in shape)
        self.cells = [(label, prediction) for label in sorted({int(label) for label in labels})
                      for prediction in range(len(self.class_names))]
        self._cell_index = {cell: i for i, cell in enumerate(self.cells)}
        self.counts = np.zeros((len(self.methods), len(self.cells)), dtype=np.int64)
        self._sums: dict[tuple[int, int], np.ndarray] = {}

    def add(self, method: int, label: int, prediction: int, relevance: np.ndarray) -> None:
        """Add one map (shape ``shape``) of method number ``method`` to cell (label, prediction)."""
        cell = self._cell_index[(int(label), int(prediction))]
        total = self._sums.get((method, cell))
        if total is None:
            total = self._sums[(method, cell)] = np.zeros(self.shape, dtype=np.float64)
        np.add(total, relevance, out=total)
        self.counts[method, cell] += 1

    def reduce(self, world: World) -> None:
        """Sum counts and sums over all ranks (in place, on every rank); every rank must call it."""
        world.sum(self.counts)
        for method, cell in zip(*np.nonzero(self.counts)):
            key = (int(method), int(cell))
            self._sums[key] = world.sum(self._sums.get(key, np.zeros(self.shape, dtype=np.float64)))

    def groups(self, positive: str, negative: str) -> dict[str, list[tuple[int, int]]]:
        """{group: its cells}: every true class by name, TP/TN/FP/FN when ``positive`` and ``negative`` are
        classes, ``predicted-<class>`` for subjects without a label."""
        names = self.class_names
        labels = sorted({label for label, _ in self.cells})
        groups = {names[label]: [cell for cell in self.cells if cell[0] == label] for label in labels if label >= 0}
        if positive in names and negative in names and positive != negative:
            p, n = names.index(positive), names.index(negative)
            groups.update({name: [cell] for name, cell in
                           (("TP", (p, p)), ("TN", (n, n)), ("FP", (n, p)), ("FN", (p, n))) if cell in self.cells})
        if -1 in labels:
            groups.update({f"predicted-{name}": [(-1, k)] for k, name in enumerate(names)})
        return groups

    def count(self, method: int, cells: Sequence[tuple[int, int]]) -> int:
        """Number of maps of method number ``method`` in ``cells``."""
        return int(sum(self.counts[method, self._cell_index[cell]] for cell in cells))

    def mean(self, method: int, cells: Sequence[tuple[int, int]]) -> np.ndarray:
        """Mean map (float64, ``shape``) of method number ``method`` over ``cells``; DataError when empty."""
        count = self.count(method, cells)
        if not count:
            raise DataError(f"no maps of {self.methods[method]} in cells {list(cells)}")
        total = np.zeros(self.shape, dtype=np.float64)
        for cell in cells:
            part = self._sums.get((method, self._cell_index[cell]))
            if part is not None:
                total += part
        return total / count


# -- one rank's loop -------------------------------------------------------------------------------
class _SubjectTasks(Dataset):
    """One rank's subjects, read in DataLoader workers. Item: position, subject, ``maps`` {method: valid
    stored map (D, H, W)}, ``record`` (stored prediction or None), and, when something is left to
    compute, ``x`` (1, D, H, W) or ``error`` (why the input could not be used)."""

    def __init__(self, data: VolumeDataset, positions: Sequence[int], out: Path, methods: Sequence[str],
                 shape: tuple[int, ...], affine: np.ndarray, classes: int):
        self.data, self.positions, self.out, self.methods = data, list(positions), out, list(methods)
        self.shape, self.affine, self.classes = shape, affine, classes
        self.subjects = data.subjects

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        position = self.positions[i]
        subject = self.subjects[position]
        maps = {method: volume for method in self.methods
                if (volume := self._stored_map(_map_path(self.out, method, subject))) is not None}
        item = {"position": position, "subject": subject, "maps": maps, "record": self._record(subject),
                "x": None, "error": None}
        if item["record"] is None or len(maps) < len(self.methods):
            try:
                x = self.data[position]["x"]
            except (LRPError, OSError, EOFError) as error:
                item["error"] = str(error)
            else:
                if tuple(x.shape[1:]) != self.shape:
                    item["error"] = (f"the volume has shape {tuple(x.shape[1:])} after preprocessing, the grid is "
                                     f"{self.shape}; resample to the grid (--grid)")
                else:
                    item["x"] = x
        return item

    def _stored_map(self, path: Path) -> Tensor | None:
        if not path.is_file():
            return None
        try:
            volume, affine = load_volume(path, finite=True)
        except (LRPError, OSError, EOFError):
            return None
        if volume.shape != self.shape or not np.allclose(affine, self.affine, atol=AFFINE_TOLERANCE_MM):
            return None
        return torch.from_numpy(volume)

    def _record(self, subject: str) -> dict[str, Any] | None:
        try:
            record = json.loads((self.out / RECORDS / f"{subject}.json").read_text(encoding="utf-8"))
            prediction, probabilities = int(record["prediction"]), [float(p) for p in record["probabilities"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not 0 <= prediction < self.classes or len(probabilities) != self.classes:
            return None
        return {"prediction": prediction, "probabilities": probabilities}


class _Run:
    """The main process's side of one rank's loop: predict, explain, write maps and records, emit rows."""

    def __init__(self, model: nn.Module, data: VolumeDataset, specs: Sequence[MethodSpec], out: Path,
                 grid: tuple[tuple[int, ...], np.ndarray], target: int | None, atlas: Atlas | None,
                 class_names: list[str], positive: str, negative: str, start: str):
        self.model, self.out, self.affine, self.target, self.atlas = model, out, grid[1], target, atlas
        self.explainers = {spec.label: spec.explainer(start) for spec in specs}
        self.class_names, self.positive, self.negative = class_names, positive, negative
        manifest = data.manifest
        self.patients, self.labels = manifest["patient"].tolist(), manifest["label"].tolist()
        self.sums = GroupSums(list(self.explainers), self.labels, class_names, grid[0])
        self.device = next(iter(model.parameters()), torch.empty(0)).device
        probabilities = [f"prob_{name}" for name in class_names]
        self.tables = {"predictions": ["subject", "patient", "label", "prediction", *probabilities, "group_true",
                                       "group_pred", "outcome"],
                       "errors": _ERROR_COLUMNS} | ({"regions": _REGION_COLUMNS} if atlas is not None else {})

    def process(self, items: list[dict[str, Any]], parts: _TableParts) -> list[str]:
        """Compute what ``items`` lack, write it, emit their rows in order; returns done / skipped / failed each."""
        ready = [item for item in items if item["error"] is None]
        for item in ready:
            item["maps"] = {method: volume.numpy() for method, volume in item["maps"].items()}
            item["errors"], item["computed"] = {}, item["x"] is not None
        fresh = [item for item in ready if item["record"] is None]
        if fresh:
            for item, probabilities in zip(fresh, self._predict(torch.stack([item["x"] for item in fresh]))):
                item["record"] = {"prediction": int(probabilities.argmax()), "probabilities": probabilities.tolist()}
        for method, explainer in self.explainers.items():
            todo = [item for item in ready if method not in item["maps"]]
            for item, relevance in zip(todo, self._explain(explainer, todo, method)):
                if isinstance(relevance, str):
                    item["errors"][method] = relevance
                else:
                    item["maps"][method] = relevance
        for item in fresh:
            write_text(self.out / RECORDS / f"{item['subject']}.json", json.dumps(item["record"]) + "\n")
            _wrote()
        return [self._emit(item, parts) for item in items]

    def _predict(self, x: Tensor) -> np.ndarray:
        """Class probabilities (B, K) float32 for x (B, 1, D, H, W)."""
        with borrowed(self.model), torch.no_grad():
            logits = self.model(x.to(self.device))
        if logits.dim() != 2 or logits.shape[1] != len(self.class_names):
            raise DataError(f"the model returns shape {tuple(logits.shape)} for a batch of {len(x)}; expected "
                            f"({len(x)}, {len(self.class_names)}), one logit per class {self.class_names}")
        return F.softmax(logits.float(), dim=1).cpu().numpy()

    def _explain(self, explainer: Any, items: list[dict[str, Any]], method: str) -> list[np.ndarray | str]:
        """Each item's map (D, H, W) float32, saved, or the error message; a batch that fails is retried
        subject by subject, so one bad subject fails alone."""
        if not items:
            return []
        try:
            x = torch.stack([item["x"] for item in items]).to(self.device)
            relevance = explainer(self.model, x, self.target).detach().float().cpu().numpy()[:, 0]
        except LRPError as error:
            if len(items) == 1:
                return [str(error)]
            return [result for item in items for result in self._explain(explainer, [item], method)]
        results: list[np.ndarray | str] = []
        for item, volume in zip(items, relevance):
            try:
                save_image(volume, self.affine, _map_path(self.out, method, item["subject"]))
            except LRPError as error:
                results.append(str(error))
                continue
            _wrote()
            results.append(volume)
        return results

    def _emit(self, item: dict[str, Any], parts: _TableParts) -> str:
        """Rows and group sums of one subject; its outcome."""
        position, subject = item["position"], item["subject"]
        if item["error"] is not None:
            parts.add("errors", (position, 0), pd.DataFrame([[subject, "", item["error"]]], columns=_ERROR_COLUMNS))
            return "failed"
        label, prediction = int(self.labels[position]), item["record"]["prediction"]
        parts.add("predictions", (position, 0), self._prediction_row(item, label))
        for number, method in enumerate(self.explainers):
            if method in item["errors"]:
                parts.add("errors", (position, 1 + number),
                          pd.DataFrame([[subject, method, item["errors"][method]]], columns=_ERROR_COLUMNS))
                continue
            relevance = item["maps"][method]
            if self.atlas is not None:
                parts.add("regions", (position, number), region_stats({subject: relevance}, self.atlas, method=method))
            self.sums.add(number, label, prediction, relevance)
        return "failed" if item["errors"] else "done" if item["computed"] else "skipped"

    def _prediction_row(self, item: dict[str, Any], label: int) -> pd.DataFrame:
        names, prediction = self.class_names, item["record"]["prediction"]
        row = pd.DataFrame({"subject": [item["subject"]], "patient": [self.patients[item["position"]]],
                            "label": [label], "prediction": [prediction]})
        for name, probability in zip(names, item["record"]["probabilities"]):
            row[f"prob_{name}"] = np.float32(probability)
        known = {self.positive, self.negative}
        if label >= 0 and len(known) == 2 and known <= set(names) and {names[label], names[prediction]} <= known:
            return assign_groups(row, positive=self.positive, negative=self.negative, class_names=names)
        return row.assign(group_true=names[label] if label >= 0 else "", group_pred=names[prediction], outcome="")

# -- table rows through part files -----------------------------------------------------------------
class _TableParts:
    """One rank's rows of each table, as CSV text keyed by (data position, order), one line each."""

    def __init__(self, files: dict[str, TextIO], tables: dict[str, list[str]]):
        self.files, self.tables = files, tables

    def add(self, name: str, key: tuple[int, int], rows: pd.DataFrame) -> None:
        text = rows[self.tables[name]].to_csv(index=False, header=False)
        self.files[name].write(f"{key[0]} {key[1]} {json.dumps(text)}\n")


@contextmanager
def _open_parts(folder: Path, world: World, tables: dict[str, list[str]]) -> Iterator[_TableParts]:
    """Part files ``<folder>/<table>.<rank>-of-<size>.jsonl``, renamed into place when the block ends."""
    with ExitStack() as stack:
        files = {}
        for name in tables:
            temporary = stack.enter_context(atomic_path(_part_path(folder, name, world.rank, world.size)))
            files[name] = stack.enter_context(open(temporary, "w", encoding="utf-8", newline=""))
        yield _TableParts(files, tables)


def _merge_tables(out: Path, size: int, tables: dict[str, list[str]]) -> dict[str, Path]:
    """Merge the part files of all ranks into ``<out>/<table>.csv``, rows in key order, line by line."""
    paths = {}
    for name, columns in tables.items():
        paths[name] = out / f"{name}.csv"
        with ExitStack() as stack:
            parts = [stack.enter_context(open(_part_path(out / PARTS, name, rank, size), encoding="utf-8"))
                     for rank in range(size)]
            temporary = stack.enter_context(atomic_path(paths[name]))
            with open(temporary, "w", encoding="utf-8", newline="") as table:
                table.write(pd.DataFrame(columns=columns).to_csv(index=False))
                table.writelines(json.loads(line.split(" ", 2)[2]) for line in heapq.merge(*parts, key=_line_key))
        _wrote()
    return paths


def _line_key(line: str) -> tuple[int, int]:
    position, order, _ = line.split(" ", 2)
    return int(position), int(order)


def _part_path(folder: Path, name: str, rank: int, size: int) -> Path:
    return folder / f"{name}.{rank}-of-{size}.jsonl"


def _save_group_means(sums: GroupSums, affine: np.ndarray, folder: Path, positive: str,
                      negative: str) -> dict[str, dict[str, Path]]:
    """``<folder>/<method>_<group>.nii.gz`` for every group with maps, one mean in memory at a time; the
    file of a group without maps, left by an earlier run, is deleted."""
    possible = [*sums.class_names, *OUTCOMES, *(f"predicted-{name}" for name in sums.class_names)]
    written: dict[str, dict[str, Path]] = {}
    for number, method in enumerate(sums.methods):
        written[method] = {}
        for group, cells in sums.groups(positive, negative).items():
            if sums.count(number, cells):
                path = folder / f"{method}_{group}.nii.gz"
                written[method][group] = save_image(sums.mean(number, cells), affine, path)
                _wrote()
        for group in set(possible) - set(written[method]):
            (folder / f"{method}_{group}.nii.gz").unlink(missing_ok=True)
    return written


# -- the output folder -----------------------------------------------------------------------------
def _settings(model: nn.Module, data: VolumeDataset, methods: list[str], target: int | None,
              class_names: list[str], shape: tuple[int, ...], affine: np.ndarray,
              extra: dict[str, Any] | None) -> dict[str, Any]:
    """What explain.json records; all but ``methods`` must match for a rerun to reuse the outputs."""
    transform = getattr(data, "transform", None)
    preprocessing = transform.to_dict() if hasattr(transform, "to_dict") else repr(transform)
    settings = {"format": "pytorch-lrp explain", "model": _fingerprint(model), "target": target,
                "class_names": class_names, "grid": {"shape": list(shape), "affine": affine.tolist()},
                "preprocessing": preprocessing, **(extra or {}), "methods": methods}
    return json.loads(json.dumps(settings))  # as read back from the file


def _prepare(out: Path, settings: dict[str, Any]) -> None:
    """Delete temporary files of an interrupted run and old part files; check and write explain.json
    (DataError when the folder holds outputs of other settings)."""
    path = out / SETTINGS
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not readable ({error}); delete it or use another --out") from error
        differing = sorted(key for key in set(previous) | set(settings)
                           if key != "methods" and previous.get(key) != settings.get(key))
        if differing:
            raise DataError(f"{out} holds outputs of other settings (differing: {', '.join(differing)}); use another "
                            f"output folder, or delete {path} and the maps to start afresh")
    for folder, _, files in os.walk(out):
        for name in files:
            if _TEMPORARY.match(name):
                Path(folder, name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    write_text(path, json.dumps(settings, indent=2) + "\n")


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{tuple(value.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- small helpers ---------------------------------------------------------------------------------
def _check_arguments(class_names: list[str], target: int | None, atlas: Atlas | None, shape: tuple[int, ...],
                     affine: np.ndarray, batch_size: int, num_workers: int) -> None:
    if not class_names:
        raise ValueError("class_names are needed (the data name none): one per model output")
    if target is not None and not 0 <= target < len(class_names):
        raise TargetError(f"target {target} is not a class index of {class_names}")
    if atlas is not None and (atlas.shape != shape or not np.allclose(atlas.affine, affine, atol=AFFINE_TOLERANCE_MM)):
        raise DataError(f"the atlas grid {atlas.shape} with affine\n{atlas.affine}\ndiffers from the model grid "
                        f"{shape} with affine\n{affine}\n(resample it with atlas.resample_to((shape, affine)))")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")


def _unique(methods: Sequence[str | MethodSpec]) -> list[MethodSpec]:
    specs: dict[str, MethodSpec] = {}
    for method in methods:
        spec = parse_method(method)
        specs.setdefault(spec.label, spec)
    if not specs:
        raise ValueError("give at least one method, e.g. 'lrp:alpha1-beta0'")
    return list(specs.values())


def _map_path(out: Path, method: str, subject: str) -> Path:
    return out / "maps" / method / f"{subject}.nii.gz"


_writes = itertools.count(1)


def _wrote() -> None:
    """Count a file written by this process; the test hook :data:`KILL_AFTER_WRITES` may end it here."""
    written, limit = next(_writes), int(os.environ.get(KILL_AFTER_WRITES, "0"))
    if limit and written >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
