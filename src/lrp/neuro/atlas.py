"""Label atlases: an integer label image (0 = background) and the name of every label, plus the
template images they come with.

Built-in atlases and templates are MRIcron's (Debian/Ubuntu package ``mricron-data``), looked up in
``directory``, then ``$LRP_TEMPLATE_DIR``, then ``/usr/share/mricron/templates/`` (first hit wins):

- ``"aal"``: ``aal.nii.gz`` + ``aal.nii.txt``, 116 regions (``Hippocampus_L`` = 37, ...).
- ``"harvard-oxford"``: ``HarvardOxford-cort-maxprob-thr0-1mm.nii.gz``, the 48 bilateral FSL cortical
  regions named by :data:`HARVARD_OXFORD_CORTICAL` (image value = FSL index + 1).
- ``"brodmann"``: ``brodmann.nii.gz``, named ``BA<n>`` for every value n present.
- templates: ``"ch2"`` (Colin27 T1), ``"ch2bet"`` (skull-stripped), ``"ch2better"``.

All are 1 mm MNI grids. Any label NIfTI works too, with a label table (see ``label_tables``).
"""
from __future__ import annotations

import difflib
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from numpy.typing import ArrayLike

from ..errors import DataError
from .io import Grid, ImageSource, MissingFileError, check_affine, describe, grid_of, load_image
from .label_tables import LabelSource, read_area_mapping, read_label_table

__all__ = [
    "BUILTIN_ATLASES",
    "DEFAULT_TEMPLATE_DIR",
    "HARVARD_OXFORD_CORTICAL",
    "TEMPLATES",
    "TEMPLATE_DIR_VARIABLE",
    "Atlas",
    "Region",
    "load_atlas",
    "load_template",
    "template_path",
]

Region = str | int
"""A region by name ("Hippocampus_L", case-insensitive if unambiguous) or by label id (37)."""

TEMPLATE_DIR_VARIABLE = "LRP_TEMPLATE_DIR"
DEFAULT_TEMPLATE_DIR = Path("/usr/share/mricron/templates")

HARVARD_OXFORD_CORTICAL = (
    "Frontal Pole", "Insular Cortex", "Superior Frontal Gyrus", "Middle Frontal Gyrus",
    "Inferior Frontal Gyrus, pars triangularis", "Inferior Frontal Gyrus, pars opercularis", "Precentral Gyrus",
    "Temporal Pole", "Superior Temporal Gyrus, anterior division", "Superior Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, anterior division", "Middle Temporal Gyrus, posterior division",
    "Middle Temporal Gyrus, temporooccipital part", "Inferior Temporal Gyrus, anterior division",
    "Inferior Temporal Gyrus, posterior division", "Inferior Temporal Gyrus, temporooccipital part",
    "Postcentral Gyrus", "Superior Parietal Lobule", "Supramarginal Gyrus, anterior division",
    "Supramarginal Gyrus, posterior division", "Angular Gyrus", "Lateral Occipital Cortex, superior division",
    "Lateral Occipital Cortex, inferior division", "Intracalcarine Cortex", "Frontal Medial Cortex",
    "Juxtapositional Lobule Cortex (formerly Supplementary Motor Cortex)", "Subcallosal Cortex",
    "Paracingulate Gyrus", "Cingulate Gyrus, anterior division", "Cingulate Gyrus, posterior division",
    "Precuneous Cortex", "Cuneal Cortex", "Frontal Orbital Cortex", "Parahippocampal Gyrus, anterior division",
    "Parahippocampal Gyrus, posterior division", "Lingual Gyrus", "Temporal Fusiform Cortex, anterior division",
    "Temporal Fusiform Cortex, posterior division", "Temporal Occipital Fusiform Cortex", "Occipital Fusiform Gyrus",
    "Frontal Operculum Cortex", "Central Opercular Cortex", "Parietal Operculum Cortex", "Planum Polare",
    "Heschl's Gyrus (includes H1 and H2)", "Planum Temporale", "Supracalcarine Cortex", "Occipital Pole",
)
"""FSL's Harvard-Oxford cortical region names (HarvardOxford-Cortical.xml), in index order 0..47;
the maxprob image stores index + 1."""

BUILTIN_ATLASES = {
    "aal": "aal.nii.gz",
    "harvard-oxford": "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
    "brodmann": "brodmann.nii.gz",
}
"""Built-in atlas names and their image files in the template folder."""
AAL_LABEL_FILE = "aal.nii.txt"
TEMPLATES = {"ch2": "ch2.nii.gz", "ch2bet": "ch2bet.nii.gz", "ch2better": "ch2better.nii.gz"}
"""Template names and files: Colin27 T1 (ch2), skull-stripped (ch2bet), bias-corrected (ch2better)."""

_HEMISPHERE_SUFFIX = re.compile(r"^(?P<base>.*?\S)[\s_.,-]+(?:l|r|left|right|lh|rh)$", re.IGNORECASE)
_HEMISPHERE_PREFIX = re.compile(r"^(?:l|r|left|right|lh|rh)[\s_.-]+(?P<base>\S.*)$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Atlas:
    """An integer label image and the name of every label.

    image:  3D label image (X, Y, Z), integer values >= 0, 0 = background.
    labels: {label id: region name}; every non-zero value of the image has a name, names are unique.
            Ids without voxels are allowed (a region can vanish when resampling): their statistics
            are empty.
    Methods returning an atlas return a new one; none changes this one.
    """

    image: nib.Nifti1Image
    labels: dict[int, str]

    def __post_init__(self) -> None:
        if not isinstance(self.image, nib.spatialimages.SpatialImage):
            raise TypeError(f"Atlas.image must be a nibabel image, got {type(self.image).__name__}")
        if not isinstance(self.image, nib.Nifti1Image):  # other formats (MGH, Analyze, ...) are converted
            object.__setattr__(self, "image", load_image(self.image))
        check_affine(self.image.affine, f"atlas image {describe(self.image)}")
        labels = read_label_table(dict(self.labels))  # checked {id: name}, the background (0) dropped
        object.__setattr__(self, "labels", dict(sorted(labels.items())))
        duplicates = sorted(name for name, count in Counter(labels.values()).items() if count > 1)
        if duplicates:
            raise DataError(f"atlas labels: names must be unique; repeated: {', '.join(duplicates)}")
        unlabelled = [label for label in self._present_ids() if label not in self.labels]
        if unlabelled:
            raise DataError(f"atlas image {describe(self.image)}: label ids {_listed(unlabelled)} occur in the image "
                            "but have no name in the label table")

    @classmethod
    def from_array(cls, data: ArrayLike, affine: ArrayLike, labels: Mapping[int, str]) -> Atlas:
        """An atlas from a label array (X, Y, Z) of integers >= 0, a 4x4 affine and {id: name}."""
        volume = np.asarray(data)
        image = nib.Nifti1Image(volume.astype(np.int32), check_affine(affine, "atlas affine"), dtype=np.int32)
        image.header.set_xyzt_units("mm")
        return cls(image, dict(labels))

    # -- the label volume and its regions ------------------------------------------------------------
    @cached_property
    def data(self) -> np.ndarray:
        """The label volume (X, Y, Z), int32, read-only."""
        data = _label_volume(self.image, copy=True)
        data.flags.writeable = False
        return data

    @property
    def affine(self) -> np.ndarray:
        """The voxel-to-mm affine (4, 4)."""
        return self.image.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape (X, Y, Z)."""
        return self.data.shape

    @property
    def ids(self) -> tuple[int, ...]:
        """Label ids in ascending order."""
        return tuple(self.labels)

    @property
    def names(self) -> tuple[str, ...]:
        """Region names in the order of :attr:`ids`."""
        return tuple(self.labels.values())

    @property
    def voxel_volume_mm3(self) -> float:
        """The volume of one voxel in mm³ (|det| of the affine's 3x3 part, rounded to 1e-9 mm³ so that 2 mm
        voxels give exactly 8)."""
        return round(float(abs(np.linalg.det(self.affine[:3, :3]))), 9)

    def region_id(self, region: Region) -> int:
        """The label id of ``region`` (a name, case-insensitive when unambiguous, or an id)."""
        label = self._lookup(region)
        if label is None:
            raise DataError(f"no region {region!r} in the atlas{_suggestion(region, self.names)}")
        return label

    def voxel_counts(self) -> dict[int, int]:
        """{label id: number of voxels} for every label (0 for ids absent from the image)."""
        counts = self._counts
        return {label: int(counts[label]) if label < counts.size else 0 for label in self.labels}

    def mask(self, region: Region) -> np.ndarray:
        """Boolean mask (X, Y, Z) of ``region``."""
        return self.data == self.region_id(region)

    def region_volume_mm3(self, region: Region) -> float:
        """The volume of ``region`` in mm³ (its voxel count times the voxel volume)."""
        return self.voxel_counts()[self.region_id(region)] * self.voxel_volume_mm3

    def centroid_mm(self, region: Region) -> np.ndarray:
        """The centre of mass (3,) of ``region`` in mm; DataError if it has no voxels."""
        label = self.region_id(region)
        indices = np.argwhere(self.data == label)
        if not len(indices):
            raise DataError(f"region {self.labels[label]!r} (id {label}) has no voxels in the atlas")
        return nib.affines.apply_affine(self.affine, indices.mean(axis=0))

    # -- new atlases -----------------------------------------------------------------------------------
    def resample_to(self, target: ImageSource | Grid | Atlas | tuple[Sequence[int], ArrayLike]) -> Atlas:
        """This atlas on the grid of ``target`` (an image, a path, another atlas, or ``(shape, affine)``).

        Nearest-neighbour and affine-aware (``nibabel.processing.resample_from_to``, order 0): each target
        voxel takes the label at its centre's position in mm, so flipped or rotated axes are handled. Labels
        are kept; regions that lose all voxels stay listed (with a warning). Raises DataError when the target
        is malformed or holds no labelled voxel (the grids do not overlap).
        """
        shape, affine = grid_of(target.image if isinstance(target, Atlas) else target)
        source = nib.Nifti1Image(self.data, self.affine, header=self.image.header, dtype=np.int32)
        resampled = np.asarray(resample_from_to(source, (shape, affine), order=0, mode="constant", cval=0).dataobj)
        if not resampled.any():
            raise DataError(f"the target grid {shape} (spanning {_span_mm(shape, affine)} mm) holds no labelled voxel "
                            f"of the atlas (spanning {_span_mm(self.shape, self.affine)} mm): the grids do not overlap")
        atlas = self._with(resampled, affine, self.labels)
        lost = sorted(set(self._present_ids()) - set(atlas._present_ids()))
        if lost:
            warnings.warn(f"resampling the atlas to {shape} removed every voxel of "
                          f"{_listed([self.labels[label] for label in lost])}", stacklevel=2)
        return atlas

    def merge(self, mapping: Mapping[str, Sequence[Region] | Region], *, keep_unmapped: bool = False) -> Atlas:
        """Merge labels into areas: {area name: [label names or ids]} -> ids 1..K in mapping order.

        keep_unmapped: labels in no area keep their names and get ids K+1, ... (in id order); by default
        they become background (0). Unknown labels raise DataError listing them; so does a label given to
        two areas, and an area without labels.
        """
        if not mapping:
            raise DataError("merge needs at least one area")
        owner: dict[int, str] = {}
        unknown: list[str] = []
        for area, members in mapping.items():
            members = [members] if isinstance(members, (str, int, np.integer)) else list(members)
            if not members:
                raise DataError(f"merge: area {area!r} has no labels")
            for member in members:
                label = self._lookup(member)
                if label is None:
                    unknown.append(member)
                elif owner.setdefault(label, area) != area:
                    raise DataError(f"merge: label {self.labels[label]!r} is in two areas, {owner[label]!r} and "
                                    f"{area!r}")
        if unknown:
            raise DataError(f"merge: no such labels in the atlas: {', '.join(map(repr, unknown))}"
                            f"{_suggestion(unknown[0], self.names)}")
        new_id = {area: index for index, area in enumerate(mapping, start=1)}
        labels = {index: str(area) for area, index in new_id.items()}
        lookup = np.zeros(max(self.labels, default=0) + 1, dtype=np.int32)
        for label, area in owner.items():
            lookup[label] = new_id[area]
        if keep_unmapped:
            for label in (label for label in self.labels if label not in owner):
                lookup[label] = len(labels) + 1
                labels[len(labels) + 1] = self.labels[label]
        return self._with(lookup[self.data], self.affine, labels)

    def merge_hemispheres(self) -> Atlas:
        """Merge left and right parts of each region: names ending in ``_L``/``_R``, `` Left``/`` Right``,
        ``, left``/``.R``/``-lh`` ..., or starting with ``Left ``/``Right-``/``lh.`` ... (any case), become
        their common name (``Hippocampus_L`` + ``Hippocampus_R`` -> ``Hippocampus``), in order of first
        appearance; names without a hemisphere marker are kept as they are."""
        mapping: dict[str, list[int]] = {}
        for label, name in self.labels.items():
            mapping.setdefault(_without_hemisphere(name), []).append(label)
        return self.merge(mapping, keep_unmapped=True)

    def group_ranges(self, ranges: Mapping[str, Sequence[tuple[int, int] | int]], *,
                     keep_unmapped: bool = False) -> Atlas:
        """Merge labels by id ranges, e.g. ``{"Temporal lobe": [(100, 125), 200], ...}``: a pair is an
        inclusive range (ids in it without a label are skipped; a range with none raises DataError), an
        integer one id. Areas get ids 1..K in order; see :meth:`merge` for ``keep_unmapped``."""
        mapping: dict[str, list[int]] = {}
        for area, items in ranges.items():
            ids: list[int] = []
            for item in ([items] if isinstance(items, (int, np.integer)) else items):
                if isinstance(item, (tuple, list)):
                    if len(item) != 2:
                        raise DataError(f"group_ranges: area {area!r}: a range is (first, last), got {item!r}")
                    first, last = item
                    found = [label for label in self.labels if first <= label <= last]
                    if not found:
                        raise DataError(f"group_ranges: area {area!r}: no label id in {first}..{last}")
                    ids += found
                else:
                    ids.append(item)
            mapping[area] = ids
        return self.merge(mapping, keep_unmapped=keep_unmapped)

    def from_mapping_file(self, path: str | os.PathLike, *, keep_unmapped: bool = False) -> Atlas:
        """Merge as listed in a file: CSV/TSV with columns ``label`` (name or id) and ``area``, or JSON
        ``{area: [labels]}`` (see ``label_tables.read_area_mapping``); areas in file order."""
        return self.merge(read_area_mapping(path), keep_unmapped=keep_unmapped)

    # -- helpers ---------------------------------------------------------------------------------------
    @cached_property
    def _counts(self) -> np.ndarray:
        """Voxels per label value, indexed by value (bincount of the volume)."""
        return np.bincount(self.data.ravel())

    def _present_ids(self) -> list[int]:
        """Non-zero label values that occur in the image, ascending."""
        return [int(label) for label in np.flatnonzero(self._counts) if label]

    @cached_property
    def _ids_by_name(self) -> dict[str, int]:
        return {name: label for label, name in self.labels.items()}

    @cached_property
    def _ids_by_folded_name(self) -> dict[str, int | None]:
        """Case-folded name -> id, None where two names fold alike."""
        folded: dict[str, int | None] = {}
        for label, name in self.labels.items():
            key = name.casefold()
            folded[key] = None if key in folded else label
        return folded

    def _lookup(self, region: Region) -> int | None:
        if isinstance(region, (int, np.integer)) and not isinstance(region, bool):
            return int(region) if int(region) in self.labels else None
        if not isinstance(region, str):
            raise TypeError(f"a region is a name or an integer id, got {type(region).__name__}")
        text = region.strip()
        if text in self._ids_by_name:
            return self._ids_by_name[text]
        label = self._ids_by_folded_name.get(text.casefold())
        if label is None and text.isdigit() and int(text) in self.labels:
            label = int(text)
        return label

    def _with(self, data: np.ndarray, affine: np.ndarray, labels: Mapping[int, str]) -> Atlas:
        """A new atlas with label volume ``data`` (X, Y, Z) on ``affine``, keeping this atlas's space codes."""
        image = nib.Nifti1Image(data.astype(np.int32, copy=False), affine, header=self.image.header, dtype=np.int32)
        image.header.set_sform(affine, code=int(self.image.header["sform_code"]) or "aligned")
        image.header.set_qform(affine, code=int(self.image.header["qform_code"]))
        return Atlas(image, dict(labels))

    def __repr__(self) -> str:
        zooms = "x".join(f"{size:g}" for size in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))
        return f"Atlas({len(self.labels)} labels on a {self.shape} grid of {zooms} mm voxels)"


def load_atlas(name_or_path: str | os.PathLike, labels: LabelSource | None = None, *,
               directory: str | os.PathLike | None = None, allow_unlabelled: bool = False) -> Atlas:
    """Load a built-in atlas by name (``"aal"``, ``"harvard-oxford"``, ``"brodmann"``) or a label NIfTI.

    labels: a label table file (.txt, .csv, .tsv, FSL .xml, see ``label_tables``) or {id: name}. For a
    built-in atlas it replaces the shipped names; for a file it defaults to a table next to the image
    (``<image>.txt``, e.g. ``AICHAmc.nii.txt``, or ``.tsv``/``.csv``/``.xml`` with the image's stem).
    directory: where to look for built-in atlases first (then ``$LRP_TEMPLATE_DIR``, then
    ``/usr/share/mricron/templates``); MissingFileError says how to install them when they are missing.
    allow_unlabelled: name label values missing from the table ``"label <id>"`` instead of raising
    DataError listing them.
    Table ids absent from the image are kept (their statistics are empty) and reported in a warning.
    """
    key = str(name_or_path).strip().lower()
    unnamed = "label {}"
    if isinstance(name_or_path, str) and key in BUILTIN_ATLASES:
        image_path = _find_template_file(BUILTIN_ATLASES[key], directory, f"the {key!r} atlas")
        if labels is None and key == "aal":
            labels = _find_template_file(AAL_LABEL_FILE, image_path.parent, "the 'aal' atlas's label table")
        elif labels is None and key == "harvard-oxford":
            labels = dict(enumerate(HARVARD_OXFORD_CORTICAL, start=1))
        elif labels is None:  # brodmann: no table is shipped, each area is named by its number
            labels, unnamed, allow_unlabelled = {}, "BA{}", True
    else:
        image_path = Path(name_or_path)
        if not image_path.is_file():
            raise MissingFileError(f"no atlas {str(name_or_path)!r}: neither an image file nor a built-in atlas "
                                   f"({', '.join(BUILTIN_ATLASES)})")
        labels = labels if labels is not None else _sibling_table(image_path)
        if labels is None and not allow_unlabelled:
            raise DataError(f"{image_path}: no label table found next to the image; pass labels= (a table file or "
                            "{id: name}), or allow_unlabelled=True to name the labels by number")
    table = read_label_table(labels) if labels is not None else {}
    image = load_image(image_path, ndim=3)
    volume = _label_volume(image)
    present = [int(label) for label in np.flatnonzero(np.bincount(volume.ravel())) if label]
    missing = [label for label in present if label not in table]
    if missing and not allow_unlabelled:
        source = labels if isinstance(labels, (str, os.PathLike)) else "the label table"
        raise DataError(f"{source}: label ids {_listed(missing)} occur in {image_path} but have no name "
                        "(pass allow_unlabelled=True to name them 'label <id>')")
    table.update({label: unnamed.format(label) for label in missing})
    absent = sorted(set(table) - set(present))
    if absent:
        warnings.warn(f"{image_path}: labels {_listed([table[label] for label in absent])} have no voxels in the "
                      "image; they are kept with empty statistics", stacklevel=2)
    return Atlas(nib.Nifti1Image(volume, image.affine, header=image.header, dtype=np.int32), table)


def template_path(name: str = "ch2bet", directory: str | os.PathLike | None = None) -> Path:
    """The file of template ``name`` (``"ch2"``, ``"ch2bet"``, ``"ch2better"``: Colin27 T1, 1 mm MNI), looked
    up like the built-in atlases (``directory``, ``$LRP_TEMPLATE_DIR``, ``/usr/share/mricron/templates``)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return _find_template_file(TEMPLATES[name], directory, f"the {name!r} template")


def load_template(name: str = "ch2bet", directory: str | os.PathLike | None = None) -> nib.Nifti1Image:
    """The template image ``name`` (see :func:`template_path`), read with ``load_image``."""
    return load_image(template_path(name, directory))


def _find_template_file(filename: str, directory: str | os.PathLike | None, what: str) -> Path:
    folders = [Path(folder) for folder in (directory, os.environ.get(TEMPLATE_DIR_VARIABLE), DEFAULT_TEMPLATE_DIR)
               if folder]
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    raise MissingFileError(
        f"{what} needs {filename}, which is in none of: {', '.join(map(str, folders))}. Install MRIcron's "
        "templates with `sudo apt-get install mricron-data` (Debian/Ubuntu, into /usr/share/mricron/templates), "
        f"or copy them into a folder and set {TEMPLATE_DIR_VARIABLE}=<that folder> (or pass directory=...)")


def _sibling_table(image_path: Path) -> Path | None:
    """A label table next to ``image_path``: ``<name>.txt`` (MRIcron) or ``<stem>.{txt,tsv,csv,xml}``."""
    stem = image_path.name
    for suffix in (".nii.gz", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    candidates = [image_path.with_name(image_path.name + ".txt")] + [
        image_path.with_name(stem + suffix) for suffix in (".nii.txt", ".txt", ".tsv", ".csv", ".xml")]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _label_volume(image: nib.spatialimages.SpatialImage, copy: bool = False) -> np.ndarray:
    """The labels of ``image`` as an int32 volume (X, Y, Z) (a copy with ``copy``, else possibly the image's own
    array); DataError unless they are integers >= 0."""
    raw = np.asanyarray(image.dataobj)
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    name = f"atlas image {describe(image)}"
    if raw.ndim != 3:
        raise DataError(f"{name}: a label image must be 3D, got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(np.mod(raw, 1) == 0):
        raise DataError(f"{name}: label values must be integers (found fractional or NaN values)")
    if raw.size and (raw.min() < 0 or raw.max() > np.iinfo(np.int32).max):
        raise DataError(f"{name}: label values must lie in 0..2**31-1, found {raw.min()}..{raw.max()}")
    return raw.astype(np.int32, copy=copy)


def _without_hemisphere(name: str) -> str:
    for pattern in (_HEMISPHERE_SUFFIX, _HEMISPHERE_PREFIX):
        match = pattern.match(name)
        if match:
            return match.group("base").strip()
    return name


def _span_mm(shape: Sequence[int], affine: np.ndarray) -> str:
    """The mm bounding box of a grid's voxel centres, as 'x a..b, y c..d, z e..f'."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1).T
    points = nib.affines.apply_affine(affine, corners)
    low, high = points.min(axis=0), points.max(axis=0)
    return ", ".join(f"{axis} {a:g}..{b:g}" for axis, a, b in zip("xyz", low, high))


def _listed(items: Sequence, limit: int = 20) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _suggestion(name: object, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
