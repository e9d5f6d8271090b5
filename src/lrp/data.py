"""Data sources for volume classifiers: HDF5 files, NIfTI folders and CSV manifests, read lazily.

Every source is a :class:`VolumeDataset`. Item ``i`` is a dict with ``x`` a FloatTensor (1, D, H, W),
``y`` the int label (-1 = unknown), ``subject`` and ``patient`` (str) and ``index`` (the sample's
row in its source), so a ``torch.utils.data.DataLoader`` batches them into ``x`` (B, 1, D, H, W),
``y`` (B,), lists of subjects and patients, and ``index`` (B,). Volumes are read one at a time, on
access, never all at once. ``manifest`` is the table of subjects: subject, patient, label and any
covariates (age, sex, ...; for NIfTI sources the absolute ``path``). An HDF5 file opened with
:func:`open_source` keeps its subject names, patient ids and covariates when it stores them as
datasets beside ``X`` and ``y`` (see :meth:`HDF5Dataset.by_convention`).

    data = open_source("cohort.csv", transform=Preprocess(mask="brain_mask.nii.gz"))
    split = split_patients(data.manifest, test_fraction=0.2, val_fraction=0.1, seed=0)
    paths = write_split(split, "split/")          # train.csv, val.csv, test.csv
    train_data = data.select(paths["train"])
"""
from __future__ import annotations

import copy
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from .errors import DataError
from .files import atomic_path
from .neuro.io import is_nifti, load_volume, nifti_stem

__all__ = ["SPLITS", "HDF5Dataset", "NiftiDataset", "Preprocess", "VolumeDataset", "open_source", "split_patients",
           "write_split"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""Names of the parts made by :func:`split_patients` (its ``split`` column) and files of :func:`write_split`."""

_RESERVED = ("subject", "patient", "label")


class VolumeDataset(Dataset):
    """Labelled volumes read one at a time; subclasses say where a volume comes from (``_read``).

    Attributes:
        transform: optional preprocessing applied to each volume, ``(D, H, W) array -> (D, H, W)
            array`` (e.g. :class:`Preprocess`); a DataError it raises is re-raised naming the file.
        class_names: names of labels 0, 1, ... when the source gave them (or ``classes=`` did), else None.
        source: the file or folder the data come from (for messages).
    """

    def __init__(self, manifest: pd.DataFrame, *, source: str, transform: Callable[[np.ndarray], np.ndarray] | None,
                 class_names: Sequence[str] | None = None):
        self.source = source
        self.transform = transform
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self._manifest = _checked_manifest(manifest, source)
        self._rows = np.arange(len(self._manifest))

    # -- the table ---------------------------------------------------------------------------------
    @property
    def manifest(self) -> pd.DataFrame:
        """One row per sample (in dataset order): subject, patient, label, then covariates (a copy)."""
        return self._manifest.copy()

    @property
    def subjects(self) -> list[str]:
        """Subject names, in dataset order (unique)."""
        return self._manifest["subject"].tolist()

    @property
    def labels(self) -> np.ndarray:
        """Integer labels (N,), -1 where unknown."""
        return self._manifest["label"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self._manifest)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``: x FloatTensor (1, D, H, W), y int, subject str, patient str, index int."""
        position = operator.index(i)
        if not -len(self) <= position < len(self):
            raise IndexError(f"sample {position} out of range for {len(self)} samples of {self.source}")
        position %= len(self)
        row = int(self._rows[position])
        volume = np.asarray(self._read(row))
        if volume.ndim != 3:
            raise DataError(f"{self._where(row)}: expected a 3-D volume (D, H, W), got shape {volume.shape}")
        if self.transform is not None:
            try:
                volume = np.asarray(self.transform(volume))
            except DataError as error:
                raise DataError(f"{self._where(row)}: {error}") from error
        record = self._manifest.iloc[position]
        return {"x": torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None],
                "y": int(record["label"]), "subject": str(record["subject"]), "patient": str(record["patient"]),
                "index": row}

    def select(self, selection: Iterable[str] | pd.DataFrame | str | Path) -> VolumeDataset:
        """A dataset of some subjects, in the order given, reading from the same source.

        selection: subject names, a table with a ``subject`` column, or a CSV file with one (such
        as ``train.csv`` from :func:`write_split`). Raises DataError for subjects not in this dataset.
        """
        where = self.source
        if isinstance(selection, (str, Path)):
            where = str(selection)
            selection = _read_csv(Path(selection))
        if isinstance(selection, pd.DataFrame):
            if "subject" not in selection.columns:
                raise DataError(f"{where}: the selection has no 'subject' column (columns: {list(selection.columns)})")
            selection = selection["subject"]
        wanted = [str(subject) for subject in selection]
        positions = pd.Index(self._manifest["subject"]).get_indexer(wanted)
        missing = [subject for subject, position in zip(wanted, positions) if position < 0]
        if missing:
            raise DataError(f"{where}: {len(missing)} subject(s) not in {self.source}: {_first(missing)}")
        subset = copy.copy(self)
        subset._manifest = self._manifest.iloc[positions].reset_index(drop=True)
        subset._rows = self._rows[positions]
        subset._forget_handles()
        return subset

    # -- for subclasses ----------------------------------------------------------------------------
    def _read(self, row: int) -> np.ndarray:
        """The volume of source row ``row``: array (D, H, W)."""
        raise NotImplementedError

    def _where(self, row: int) -> str:
        """Where source row ``row`` lives, for messages (a file name, or file and row)."""
        return f"{self.source} [{row}]"

    def _forget_handles(self) -> None:
        """Drop open file handles (a copy or a worker process opens its own)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self)} samples)"


class HDF5Dataset(VolumeDataset):
    """Volumes in one HDF5 file, as in the paper: ``X`` (N, D, H, W) or (N, 1, D, H, W), labels ``y`` (N,).

    Args:
        path: the HDF5 file.
        x, y: names of the volume and label datasets; ``y=None`` for unlabelled data (labels -1).
        patient: dataset (N,) with the patient of each scan; None = every scan its own patient.
        subject: dataset (N,) with subject names; None = ``sub-<row>`` (zero-padded).
        extra: further per-subject datasets (N,) that become manifest columns (age, region volume, ...).
        transform: preprocessing of each volume (see :class:`VolumeDataset`).
        classes: names of labels 0, 1, ... (or, for string labels, their order).

    ``__init__`` reads only the shape of ``x`` and the small per-subject datasets. The file is opened
    on first access in each process (so it is safe with DataLoader workers) and each access reads
    one sample. :meth:`by_convention` (used by :func:`open_source`) finds ``subject``, ``patient``
    and the covariates by their dataset names instead.
    """

    def __init__(self, path: str | Path, *, x: str = "X", y: str | None = "y", patient: str | None = None,
                 subject: str | None = None, extra: Sequence[str] = (),
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 classes: Sequence[str] | None = None):
        h5py = _import_h5py()
        self.path = Path(path)
        self.x_name = x
        self._file = None
        self._pid: int | None = None
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        columns: dict[str, Any] = {}
        try:
            with h5py.File(self.path, "r") as file:
                shape = _member(file, x, self.path).shape
                if len(shape) == 5 and shape[1] != 1:
                    raise DataError(f"{self.path}: dataset '{x}' has shape {shape}: one channel expected "
                                    f"(N×1×D×H×W)")
                if len(shape) not in (4, 5):
                    raise DataError(f"{self.path}: dataset '{x}' has shape {shape}; expected N×D×H×W or "
                                    f"N×1×D×H×W")
                count = int(shape[0])
                self.volume_shape: tuple[int, int, int] = tuple(int(d) for d in shape[-3:])
                for name in (y, patient, subject, *extra):
                    if name is not None:
                        columns[name] = _per_subject(file, name, count, self.path)
        except OSError as error:
            raise DataError(f"{self.path}: not a readable HDF5 file ({error})") from error
        width = len(str(max(count - 1, 0)))
        subjects = (_as_strings(columns[subject]) if subject is not None
                    else [f"sub-{row:0{width}d}" for row in range(count)])
        labels, class_names = (_encode_labels(columns[y], classes, f"{self.path}: dataset '{y}'") if y is not None
                               else (np.full(count, -1, dtype=np.int64), classes))
        manifest = pd.DataFrame({"subject": subjects,
                                 "patient": _as_strings(columns[patient]) if patient is not None else subjects,
                                 "label": labels})
        for name in extra:
            if name in manifest.columns:
                raise DataError(f"{self.path}: extra dataset '{name}' clashes with the manifest column of that name")
            values = columns[name]
            manifest[name] = _as_strings(values) if values.dtype.kind in "OSU" else values
        super().__init__(manifest, source=str(self.path), transform=transform, class_names=class_names)

    @classmethod
    def by_convention(cls, path: str | Path, *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                      classes: Sequence[str] | None = None) -> HDF5Dataset:
        """The paper's layout (``X`` volumes, ``y`` labels) with optional per-subject datasets found by name.

        - ``subject`` (N,): subject names, strings or integers (default ``sub-<row>``), so that an HDF5
          export of NIfTI subjects keeps their names (and maps written by ``lrp study`` keep them too);
        - ``patient`` (N,): patient ids, strings or integers (default: each scan its own patient);
        - every other top-level dataset of shape (N,) or (N, 1), e.g. ``age`` or
          ``volume_mm3_Hippocampus_L``: a manifest column of that name (a covariate). Groups and
          datasets of other shapes are ignored; one named ``label`` clashes with the manifest's label
          column (DataError).

        A ``subject`` or ``patient`` dataset of the wrong length is an error, not ignored. Like the
        constructor, only the shape of ``X`` and the per-subject datasets are read.
        """
        h5py = _import_h5py()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            with h5py.File(path, "r") as file:
                count = _member(file, "X", path).shape[:1]
                shapes = {name: member.shape for name, member in file.items() if isinstance(member, h5py.Dataset)}
        except OSError as error:
            raise DataError(f"{path}: not a readable HDF5 file ({error})") from error
        extra = [name for name, shape in shapes.items()
                 if name not in ("X", "y", "subject", "patient") and count and shape in (count, (*count, 1))]
        return cls(path, subject="subject" if "subject" in shapes else None,
                   patient="patient" if "patient" in shapes else None, extra=extra, transform=transform,
                   classes=classes)

    def _read(self, row: int) -> np.ndarray:
        volume = self._handle()[self.x_name][row]
        return volume[0] if volume.ndim == 4 else volume

    def _where(self, row: int) -> str:
        return f"{self.path} ['{self.x_name}'][{row}]"

    def _handle(self):
        """The file, opened once per process (a handle inherited through fork is not used)."""
        if self._file is None or self._pid != os.getpid():
            self._file = _import_h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def _forget_handles(self) -> None:
        self._file, self._pid = None, None

    def close(self) -> None:
        """Close this process's handle on the file (it is reopened on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._forget_handles()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state


class NiftiDataset(VolumeDataset):
    """NIfTI volumes (.nii / .nii.gz) from a folder, a CSV manifest, or a single file.

    - folder: every ``*.nii`` / ``*.nii.gz`` in it (not recursive), sorted; subject = file name
      without ``.nii.gz`` / ``.nii``; each subject its own patient; labels unknown (-1).
    - CSV: a column ``path`` (relative to the CSV's folder, or absolute), optional ``subject``
      (default: the file name as above), ``patient`` (default: the subject), ``label`` (integers,
      or class names such as AD / HC; empty = unknown) and any covariate columns.

    ``paths`` holds the absolute file of each sample (also the manifest's ``path`` column). Files are
    checked to exist in ``__init__`` but read only on access, with ``lrp.neuro.io.load_volume``.
    ``classes`` names labels 0, 1, ... (for string labels, it fixes their order; default: sorted).
    """

    def __init__(self, source: str | Path, *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 classes: Sequence[str] | None = None):
        source = Path(source)
        if source.is_dir():
            manifest, class_names = _folder_manifest(source), classes
        elif source.suffix.lower() == ".csv":
            manifest, class_names = _csv_manifest(source, classes)
        elif is_nifti(source):
            if not source.is_file():
                raise DataError(f"{source}: no such file")
            manifest, class_names = _path_manifest([source.absolute()]), classes
        else:
            raise DataError(f"{source}: not a folder, a CSV manifest or a NIfTI file")
        super().__init__(manifest, source=str(source), transform=transform, class_names=class_names)
        self._source_paths = [Path(path) for path in self._manifest["path"]]  # by source row, kept by select

    @property
    def paths(self) -> list[Path]:
        """Absolute file of each sample, in dataset order."""
        return [Path(path) for path in self._manifest["path"]]

    def _read(self, row: int) -> np.ndarray:
        data, _ = load_volume(self._source_paths[row], ndim=3)
        return data

    def _where(self, row: int) -> str:
        return str(self._source_paths[row])


def open_source(spec: str | Path, *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                classes: Sequence[str] | None = None) -> VolumeDataset:
    """The dataset behind ``spec``: an HDF5 file (.h5 / .hdf5), a CSV manifest (.csv), a folder of
    NIfTI files, or one NIfTI file. Raises DataError for anything else.

    An HDF5 file holds ``X`` (N, D, H, W) or (N, 1, D, H, W) and labels ``y`` (N,), and optionally
    ``subject`` (names), ``patient`` (ids) and covariates as datasets of one value per sample, found
    by name (see :meth:`HDF5Dataset.by_convention`)."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if suffix in (".h5", ".hdf5"):
        return HDF5Dataset.by_convention(path, transform=transform, classes=classes)
    if path.is_dir() or suffix == ".csv" or is_nifti(path):
        return NiftiDataset(path, transform=transform, classes=classes)
    raise DataError(f"{path}: unknown data source; give an HDF5 file (.h5, .hdf5), a CSV manifest (.csv), "
                    f"a folder of NIfTI files or a NIfTI file (.nii, .nii.gz)")


class Preprocess:
    """Per-volume preprocessing: resampling to ``grid``, min-max scaling, brain-mask multiplication.

    Args:
        minmax: scale each volume to [0, 1] by its own minimum and maximum, as the paper did. A
            constant volume (max = min, e.g. an empty scan) cannot be scaled and raises DataError;
            so do NaN or infinite values.
        mask: brain mask (a NIfTI path or image, or an array) on the output grid (``grid``, or the
            volumes' grid when ``grid`` is None); voxels where it is 0 are set to 0.
        grid: target shape (D, H, W) for models built for a fixed grid; volumes of another shape are
            resampled with ``scipy.ndimage.zoom`` (order 1, trilinear) to exactly this shape.
        invert: after min-max scaling, turn the contrast inside the brain around (``1 − x`` where the
            mask is non-zero, or where ``x > 0`` without a mask; the background stays 0), so that CSF is
            bright and tissue loss shows as *more* signal. LRP's rules credit present signal (x·w from
            a zero reference), so atrophy, an absence of tissue signal in T1, is only found by them on
            inverted inputs (see ``lrp demo``'s report). Needs ``minmax``.

    Applied in the order resample → min-max → mask → invert, so masked voxels are 0 = the minimum.
    ``__call__``: array (D, H, W) -> float32 array of shape ``grid`` (or unchanged shape).
    """

    def __init__(self, minmax: bool = True, mask: str | Path | np.ndarray | Any | None = None,
                 grid: Sequence[int] | None = None, invert: bool = False):
        if invert and not minmax:
            raise ValueError("invert needs minmax: the contrast is turned around on the [0, 1] scale")
        self.minmax = bool(minmax)
        self.invert = bool(invert)
        self.grid = None if grid is None else _checked_grid(grid)
        self.mask_source = None if mask is None else str(mask) if isinstance(mask, (str, Path)) else "<in-memory>"
        self.mask = None if mask is None else _load_mask(mask)
        if self.mask is not None and self.grid is not None and self.mask.shape != self.grid:
            raise DataError(f"mask {self.mask_source}: shape {self.mask.shape} differs from grid {self.grid}")

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise DataError(f"expected a 3-D volume (D, H, W), got shape {volume.shape}")
        if self.grid is not None and volume.shape != self.grid:
            factors = [target / size for target, size in zip(self.grid, volume.shape)]
            volume = ndimage.zoom(volume, factors, order=1)
        if self.minmax:
            volume = _minmax(volume)
        if self.mask is not None:
            if self.mask.shape != volume.shape:
                raise DataError(f"mask {self.mask_source}: shape {self.mask.shape} differs from the volume's "
                                f"{volume.shape}")
            volume = volume * self.mask
        if self.invert:
            brain = volume > 0 if self.mask is None else self.mask != 0
            volume = np.where(brain, 1.0 - volume, 0.0).astype(np.float32)
        return volume

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (for model.json); an in-memory mask is recorded as "<in-memory>"."""
        return {"minmax": self.minmax, "mask": self.mask_source, "grid": None if self.grid is None else list(self.grid),
                "invert": self.invert}

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Preprocess:
        """Rebuild from :meth:`to_dict` (a mask recorded as "<in-memory>" cannot be rebuilt: DataError)."""
        if options.get("mask") == "<in-memory>":
            raise DataError("the preprocessing used an in-memory mask that was not saved; pass the mask again")
        return cls(minmax=options.get("minmax", True), mask=options.get("mask"), grid=options.get("grid"),
                   invert=options.get("invert", False))

    def __repr__(self) -> str:
        return (f"Preprocess(minmax={self.minmax}, mask={self.mask_source!r}, grid={self.grid}, "
                f"invert={self.invert})")


def split_patients(manifest: pd.DataFrame, *, test_per_class: int | None = None, val_fraction: float = 0.1,
                   test_fraction: float = 0.2, stratify: str | Sequence[str] | None = "label",
                   seed: int = 0) -> pd.DataFrame:
    """Split subjects into train / val / test by patient, stratified, reproducibly.

    All scans of a patient go to one side. Patients are grouped into strata by ``stratify`` (a
    column or columns; a patient with scans of several values counts with its most frequent one,
    ties to the smallest; None = one stratum). Within each stratum of n patients (sorted by name,
    then shuffled with ``numpy.random.default_rng(seed)``), the first ``test_per_class`` (if given,
    else round(test_fraction·n)) go to test, the next round(val_fraction·n) to val, the rest to
    train; counts are lowered where they would leave no training patient (val first). The result
    does not depend on the manifest's row order. With the default ``stratify="label"`` the strata
    are the classes, so ``test_per_class`` gives a class-balanced test set.

    manifest: a table with ``subject`` and ``patient`` columns and the ``stratify`` columns.
    Returns a copy of ``manifest`` with a ``split`` column ("train", "val" or "test").
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         f"and leave room for training")
    if test_per_class is not None and (isinstance(test_per_class, bool) or int(test_per_class) != test_per_class
                                       or test_per_class < 0):
        raise ValueError(f"test_per_class must be a non-negative int, got {test_per_class!r}")
    columns = [] if stratify is None else [stratify] if isinstance(stratify, str) else list(stratify)
    missing = [column for column in ("subject", "patient", *columns) if column not in manifest.columns]
    if missing:
        raise DataError(f"the manifest has no column(s) {missing} (columns: {list(manifest.columns)})")
    patients = manifest["patient"].astype(str)
    keys = manifest[columns].astype(str).agg("|".join, axis=1) if columns else pd.Series("", index=manifest.index)
    stratum_of = keys.groupby(patients).agg(lambda values: values.mode().iloc[0])
    rng = np.random.default_rng(seed)
    part_of: dict[str, str] = {}
    for stratum, members in stratum_of.groupby(stratum_of, sort=True):
        names = np.sort(members.index.to_numpy(dtype=str))
        count = len(names)
        if test_per_class is not None and test_per_class >= count:
            raise ValueError(f"stratum {stratum!r} has {count} patient(s): too few for {test_per_class} test "
                             f"patient(s) and at least one for training")
        n_test = int(test_per_class) if test_per_class is not None else min(_round(test_fraction * count), count - 1)
        n_val = min(_round(val_fraction * count), count - 1 - n_test)
        order = rng.permutation(names)
        part_of.update({name: "test" for name in order[:n_test]})
        part_of.update({name: "val" for name in order[n_test:n_test + n_val]})
        part_of.update({name: "train" for name in order[n_test + n_val:]})
    result = manifest.copy()
    result["split"] = patients.map(part_of).to_numpy()
    return result


def write_split(manifest: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write the rows of each part of a split manifest (its ``split`` column) to ``train.csv``,
    ``val.csv`` and ``test.csv`` in ``out_dir`` (created; each file written atomically, an empty part
    as a header only). Returns {"train": path, "val": path, "test": path}."""
    if "split" not in manifest.columns:
        raise DataError("the manifest has no 'split' column; make one with split_patients")
    unknown = sorted(set(manifest["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise DataError(f"the split column holds {unknown}; expected only {list(SPLITS)}")
    paths = {}
    for part in SPLITS:
        path = Path(out_dir) / f"{part}.csv"
        with atomic_path(path) as temporary:
            manifest[manifest["split"] == part].to_csv(temporary, index=False)
        paths[part] = path
    return paths


# -- manifests -------------------------------------------------------------------------------------
def _checked_manifest(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    if len(manifest) == 0:
        raise DataError(f"{source}: no volumes")
    duplicated = manifest["subject"][manifest["subject"].duplicated()].tolist()
    if duplicated:
        raise DataError(f"{source}: subject names must be unique; repeated: {_first(duplicated)}")
    manifest = manifest.reset_index(drop=True)
    manifest["subject"] = manifest["subject"].astype(str)
    manifest["patient"] = manifest["patient"].astype(str)
    manifest["label"] = manifest["label"].astype(np.int64)
    return manifest


def _folder_manifest(folder: Path) -> pd.DataFrame:
    files = sorted(path for path in folder.iterdir() if path.is_file() and is_nifti(path))
    if not files:
        raise DataError(f"{folder}: no NIfTI files (.nii, .nii.gz) in this folder")
    return _path_manifest([path.absolute() for path in files])


def _path_manifest(paths: list[Path]) -> pd.DataFrame:
    subjects = [nifti_stem(path) for path in paths]
    return pd.DataFrame({"subject": subjects, "patient": subjects, "label": np.full(len(paths), -1),
                         "path": [str(path) for path in paths]})


def _csv_manifest(csv: Path, classes: Sequence[str] | None) -> tuple[pd.DataFrame, list[str] | None]:
    table = _read_csv(csv)
    if "path" not in table.columns:
        raise DataError(f"{csv}: no 'path' column (columns: {list(table.columns)})")
    blank = _blank(table["path"])
    if blank.any():
        raise DataError(f"{csv}: empty 'path' on line(s) {_lines(blank)}")
    paths = [_resolve(value, csv.parent) for value in table["path"]]
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise DataError(f"{csv}: {len(absent)} file(s) listed in 'path' do not exist: {_first(absent)}")
    subjects = table["subject"] if "subject" in table.columns else pd.Series([nifti_stem(path) for path in paths])
    for column, values in (("subject", subjects), ("patient", table.get("patient"))):
        if values is not None and _blank(values).any():
            raise DataError(f"{csv}: empty '{column}' on line(s) {_lines(_blank(values))}")
    if "label" in table.columns:
        labels, class_names = _encode_labels(table["label"].to_numpy(dtype=object), classes, f"{csv}: column 'label'")
    else:
        labels, class_names = np.full(len(table), -1, dtype=np.int64), None if classes is None else list(classes)
    manifest = pd.DataFrame({"subject": subjects.astype(str).str.strip(),
                             "patient": (table["patient"] if "patient" in table.columns else subjects).astype(str),
                             "label": labels, "path": [str(path) for path in paths]})
    covariates = table.drop(columns=[c for c in (*_RESERVED, "path") if c in table.columns])
    return pd.concat([manifest, covariates.reset_index(drop=True)], axis=1), class_names


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype={"subject": str, "patient": str, "path": str}, keep_default_na=False,
                           na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable CSV table ({error})") from error


def _encode_labels(values: Any, classes: Sequence[str] | None, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels (N,) (-1 = unknown) from integers or class names, and the class names if known."""
    series = pd.Series(np.asarray(values), dtype=object).map(
        lambda value: value.decode("utf-8") if isinstance(value, bytes) else value)
    unknown = _blank(series)
    given = series[~unknown]
    labels = np.full(len(series), -1, dtype=np.int64)
    numbers = pd.to_numeric(given, errors="coerce")
    if numbers.notna().all():
        if ((numbers != np.round(numbers)) | (numbers < -1)).any():
            raise DataError(f"{where}: labels must be integers >= 0 (or -1 = unknown), got {_first(given.unique())}")
        labels[~unknown.to_numpy()] = numbers.astype(np.int64)
        class_names = None if classes is None else [str(name) for name in classes]
        if class_names is not None and labels.max() >= len(class_names):
            raise DataError(f"{where}: label {labels.max()} has no name among classes {class_names}")
        return labels, class_names
    names = given.astype(str).str.strip()
    class_names = sorted(names.unique()) if classes is None else [str(name) for name in classes]
    strangers = sorted(set(names) - set(class_names))
    if strangers:
        raise DataError(f"{where}: label(s) {_first(strangers)} not among classes {class_names}")
    labels[~unknown.to_numpy()] = names.map({name: code for code, name in enumerate(class_names)}).to_numpy()
    return labels, class_names


# -- HDF5 ------------------------------------------------------------------------------------------
def _import_h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("HDF5 data need h5py: pip install 'pytorch-lrp[neuro]'") from error
    return h5py


def _member(file, name: str, path: Path):
    if name not in file:
        raise DataError(f"{path}: no dataset '{name}' (top-level names: {list(file.keys())})")
    member = file[name]
    if not hasattr(member, "shape"):
        raise DataError(f"{path}: '{name}' is a group, not a dataset")
    return member


def _per_subject(file, name: str, count: int, path: Path) -> np.ndarray:
    values = _member(file, name, path)[()]
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (count,):
        raise DataError(f"{path}: dataset '{name}' has shape {values.shape}; expected one value per sample ({count},)")
    return values


def _as_strings(values: Any) -> list[str]:
    """Names from bytes, strings or numbers (integral floats lose their '.0')."""
    names = []
    for value in np.asarray(values).tolist():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        names.append(str(value).strip())
    return names


# -- preprocessing ---------------------------------------------------------------------------------
def _minmax(volume: np.ndarray) -> np.ndarray:
    if not np.isfinite(volume).all():
        raise DataError("the volume holds NaN or infinite values")
    low, high = float(volume.min()), float(volume.max())
    if high == low:
        raise DataError(f"constant volume (every voxel = {low:g}): min-max scaling is undefined")
    return (volume - low) / np.float32(high - low)


def _load_mask(mask: Any) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        array = mask
    else:
        array, _ = load_volume(mask, ndim=3)
    if array.ndim != 3:
        raise DataError(f"mask: expected a 3-D array (D, H, W), got shape {array.shape}")
    return (np.asarray(array) != 0).astype(np.float32)


def _checked_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in grid)
    if len(shape) != 3 or min(shape) < 1 or any(d != g for d, g in zip(shape, grid)):
        raise ValueError(f"grid must be three positive ints (D, H, W), got {grid!r}")
    return shape  # type: ignore[return-value]


# -- small helpers ---------------------------------------------------------------------------------
def _resolve(value: str, folder: Path) -> Path:
    path = Path(str(value).strip()).expanduser()
    return (path if path.is_absolute() else folder / path).absolute()


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype(str).str.strip() == "")


def _lines(mask: pd.Series) -> str:
    """CSV line numbers (header = line 1) of the rows where ``mask`` holds."""
    return _first([int(row) + 2 for row in np.flatnonzero(mask.to_numpy())])


def _first(items: Sequence[Any], shown: int = 5) -> str:
    items = list(items)
    text = ", ".join(str(item) for item in items[:shown])
    return text + (f", ... ({len(items)} in all)" if len(items) > shown else "")


def _round(value: float) -> int:
    """Round half up (Python's round sends 0.5 to 0)."""
    return int(np.floor(value + 0.5))
