"""Reading label tables ({label id: region name}) and area mappings ({area: [labels]}) from files.

Label tables, chosen by the file name:

- ``.xml``: FSL atlas XML, ``<label index="0" x=".." y=".." z="..">Frontal Pole</label>``. FSL counts
  ``index`` from 0 over the volumes of a probabilistic atlas, and the summary (maxprob) image stores
  index + 1, keeping 0 for the background. So the image value is ``index + 1`` when the XML header's
  ``<type>`` is "Probabilistic" or missing, and ``index`` for FSL's "Label" atlases (where index 0
  names the background); ``index_offset`` overrides this.
- ``.csv`` / ``.tsv``: columns for the id (``id``, ``index``, ``value``, ``label_id``, ``label``) and
  the name (``name``, ``label_name``, ``region``, ``region_name``, ``structure``, ``label``), matched
  case-insensitively in that order; without a header, the first two columns.
- anything else (``.txt``): one label per line, AAL/MRIcron style ``id name [code]`` separated by
  spaces (a third field is dropped when it is an integer code; names with spaces keep them), or
  ``id<TAB>name[<TAB>...]``; a header line makes it a delimited table as above. Lines starting with
  ``#`` are comments.

Id 0 is the background: entries for it ("Unclassified", "Background") are dropped.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd

from ..errors import DataError
from .io import MissingFileError

__all__ = ["LabelSource", "read_area_mapping", "read_label_table"]

LabelSource = str | os.PathLike | Mapping[int, str]
"""A label table file, or a mapping {label id: region name}."""

ID_COLUMNS = ("id", "index", "value", "label_id", "label")
NAME_COLUMNS = ("name", "label_name", "region", "region_name", "structure", "label")


def read_label_table(source: LabelSource, *, index_offset: int | None = None) -> dict[int, str]:
    """{label id: name} from a file (format by suffix, see the module docstring) or a mapping.

    index_offset: only for FSL XML, the value added to ``index`` (default: by the XML's atlas type).
    Ids are integers >= 0 (0 is dropped as background); names are stripped and non-empty; duplicate ids
    raise DataError naming the file.
    """
    if isinstance(source, Mapping):
        return _checked(((key, name) for key, name in source.items()), "label mapping")
    path = _existing(source)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return _read_fsl_xml(path, index_offset)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    return _read_text(path)


def read_area_mapping(path: str | os.PathLike) -> dict[str, list[str | int]]:
    """{area: [label names or ids]} in file order, for ``Atlas.merge``.

    ``.json``: an object {area: [labels]}. Otherwise a CSV (TSV for ``.tsv`` or tab-separated ``.txt``)
    with columns ``label`` (a name, or an id when it is an integer) and ``area``, one row per label.
    """
    path = _existing(path)
    if path.suffix.lower() == ".json":
        return _read_json_mapping(path)
    frame = _read_frame(path, _separator(path))
    columns = {str(column).strip().lower(): column for column in frame.columns}
    if "label" not in columns or "area" not in columns:
        raise DataError(f"{path}: an area mapping needs columns 'label' and 'area'; found {list(frame.columns)}")
    mapping: dict[str, list[str | int]] = {}
    for row, (label, area) in enumerate(zip(frame[columns["label"]], frame[columns["area"]]), start=1):
        label, area = label.strip(), area.strip()
        if not label or not area:
            raise DataError(f"{path}, data row {row}: empty label or area")
        mapping.setdefault(area, []).append(_label_or_id(label))
    if not mapping:
        raise DataError(f"{path}: the area mapping is empty")
    return mapping


def _existing(source: str | os.PathLike) -> Path:
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    return path


def _checked(entries, where: str) -> dict[int, str]:
    """{id: name} from (id, name) pairs: ids integers >= 0, unique; names non-empty; id 0 dropped."""
    table: dict[int, str] = {}
    for key, name in entries:
        try:
            label = int(str(key).strip())
        except ValueError:
            raise DataError(f"{where}: label id {key!r} is not an integer") from None
        name = str(name).strip()
        if label < 0:
            raise DataError(f"{where}: label id {label} is negative")
        if not name:
            raise DataError(f"{where}: label id {label} has an empty name")
        if label in table:
            raise DataError(f"{where}: label id {label} appears twice ({table[label]!r}, {name!r})")
        table[label] = name
    table.pop(0, None)
    return table


def _read_fsl_xml(path: Path, index_offset: int | None) -> dict[int, str]:
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DataError(f"{path}: not valid XML ({error})") from error
    if index_offset is None:
        atlas_type = (root.findtext("header/type") or "").strip().lower()
        index_offset = 0 if atlas_type == "label" else 1
    entries = []
    for element in root.iter("label"):
        index = element.get("index")
        if index is None:
            raise DataError(f"{path}: a <label> element has no index attribute")
        try:
            entries.append((int(index) + index_offset, element.text or ""))
        except ValueError:
            raise DataError(f"{path}: label index {index!r} is not an integer") from None
    if not entries:
        raise DataError(f"{path}: no <label index=...> elements found")
    return _checked(entries, str(path))


def _read_text(path: Path) -> dict[int, str]:
    lines = [(number, line) for number, line in enumerate(_text(path).splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{path}: the label table is empty")
    first = lines[0][1]
    if not _is_integer(first.split()[0]):  # a header: a delimited table
        return _read_delimited(path, "\t" if "\t" in first else ("," if "," in first else r"\s+"))
    entries = []
    for number, line in lines:
        fields = [field.strip() for field in line.split("\t")] if "\t" in line else line.split()
        if len(fields) < 2 or not _is_integer(fields[0]):
            raise DataError(f"{path}, line {number}: expected 'id name', got {line.strip()!r}")
        if "\t" in line or (len(fields) == 3 and _is_integer(fields[2])):  # tab-separated, or AAL's "id name code"
            name = fields[1]
        else:
            name = " ".join(fields[1:])
        entries.append((fields[0], name))
    return _checked(entries, str(path))


def _read_delimited(path: Path, separator: str) -> dict[int, str]:
    frame = _read_frame(path, separator, header=None)
    if frame.shape[1] < 2:
        raise DataError(f"{path}: a label table needs an id and a name column; found {frame.shape[1]} column(s)")
    if _is_integer(frame.iloc[0, 0]):
        ids, names = frame.iloc[:, 0], frame.iloc[:, 1]
    else:
        header = [str(cell).strip().lower() for cell in frame.iloc[0]]
        id_column = next((header.index(c) for c in ID_COLUMNS if c in header), None)
        name_column = next((header.index(c) for c in NAME_COLUMNS if c in header and header.index(c) != id_column),
                           None)
        if id_column is None or name_column is None:
            raise DataError(f"{path}: no id and name columns among {header} (ids: one of {', '.join(ID_COLUMNS)}; "
                            f"names: one of {', '.join(NAME_COLUMNS)})")
        ids, names = frame.iloc[1:, id_column], frame.iloc[1:, name_column]
    return _checked(zip(ids, names), str(path))


def _read_frame(path: Path, separator: str, header: int | None = 0) -> pd.DataFrame:
    """All cells as stripped-able strings; DataError naming the file when pandas cannot parse it."""
    try:
        return pd.read_csv(path, sep=separator, header=header, dtype=str, keep_default_na=False, comment="#",
                           skipinitialspace=True, encoding="utf-8-sig", engine="python" if len(separator) > 1
                           else "c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the table ({error})") from error


def _read_json_mapping(path: Path) -> dict[str, list[str | int]]:
    try:
        content = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(content, dict) or not content:
        raise DataError(f"{path}: expected a non-empty JSON object {{area: [labels]}}")
    mapping: dict[str, list[str | int]] = {}
    for area, labels in content.items():
        labels = [labels] if isinstance(labels, (str, int)) else labels
        if not isinstance(labels, list) or not all(isinstance(label, (str, int)) for label in labels):
            raise DataError(f"{path}: area {area!r} must map to a list of label names or ids, got {labels!r}")
        mapping[area] = [_label_or_id(label) if isinstance(label, str) else label for label in labels]
    return mapping


def _separator(path: Path) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    first = next((line for line in _text(path).splitlines() if line.strip()), "")
    return "\t" if "\t" in first else ","


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from error


def _is_integer(text: str) -> bool:
    try:
        int(str(text).strip())
    except ValueError:
        return False
    return True


def _label_or_id(label: str) -> str | int:
    """An integer-looking label is an id; anything else a name."""
    return int(label) if _is_integer(label) else label.strip()
