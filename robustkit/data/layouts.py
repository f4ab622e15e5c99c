"""Finding the files of a dataset: the folder and manifest layouts, and checking each entry.

Two layouts are read:

* a folder per class (the COVID-19 Radiography Database layout)::

      root/COVID-19/COVID-19_0001.png       root/masks/COVID-19/COVID-19_0001.png
      root/NORMAL/...                       (or root/<class>/masks/<stem>.png, or
      root/Viral Pneumonia/...               root/<class>/images/ + root/<class>/masks/)

* a CSV manifest with the columns ``path,label`` and an optional ``mask`` column, the paths
  relative to the folder of the CSV file.

:func:`scan_layout` finds the entries (image, label, optional mask) without decoding them;
:func:`robustkit.data.loader.load_dataset` builds the :class:`~robustkit.data.dataset.Dataset` from them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robustkit.data.imageio import IMAGE_SUFFIXES, _bad, _check_file, _check_mask_shape, _probe
from robustkit.data.metadata import (
    META_KEY,
    MISSING,
    SOURCE,
    read_table,
    sidecar_tables,
    typed_columns,
    url_source,
)
from robustkit.errors import DataError, check_choice

__all__ = ["FINDING_SEP", "MASK_KINDS", "NO_FINDING", "scan_layout"]

_MASKS = "masks"
_LUNG_MASKS = "lung_masks"
_IMAGES = "images"
_RESERVED = ("path", "label", "mask", "mask_kind")

#: The manifest label of an image with none of the findings (ChestX-ray14's form).
NO_FINDING = "No Finding"
#: Separates the findings of one image in a multi-label manifest's ``label`` column.
FINDING_SEP = "|"
#: Prefix of a multi-label manifest's per-finding mask columns (``mask.Effusion``).
FINDING_MASK = "mask."

#: What a ``masks`` folder or column holds: lesion masks, lung-field masks, or nothing to read.
MASK_KINDS = ("lesion", "lung", "none")


@dataclass(frozen=True)
class _Entry:
    id: str
    path: Path
    label: str
    mask_path: Path | None
    rel: str
    lung_mask_path: Path | None = None
    metadata: tuple[tuple[str, Any], ...] = ()
    mask_kind: str = ""
    #: multi-label data: the findings present (names; empty for "No Finding"), else None
    findings: tuple[str, ...] | None = None
    #: multi-label data: ``(finding, mask path)`` for the findings that have a mask
    finding_masks: tuple[tuple[str, Path], ...] = ()

    @property
    def mask_files(self) -> list[Path]:
        """Every mask file of the entry (lesion, lung, per finding)."""
        paths = [self.mask_path, self.lung_mask_path, *(p for _, p in self.finding_masks)]
        return [p for p in paths if p is not None]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return not _hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _walk_images(folder: Path, *, skip: Path | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), ignoring hidden entries and ``skip``."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and here / d != skip)
        found.extend(here / f for f in sorted(filenames) if _is_image(f))
    return found


def _stem_key(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _mask_index(folder: Path) -> dict[str, Path]:
    """Masks under ``folder`` keyed by their relative path without suffix."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in _walk_images(folder):
        index.setdefault(_stem_key(path, folder), path)
    return index


def _class_folders(root: Path) -> list[Path]:
    folders = [
        p
        for p in root.iterdir()
        if p.is_dir() and not _hidden(p.name) and p.name.lower() not in (_MASKS, _LUNG_MASKS)
    ]
    if not folders:
        raise _bad(root, "expected class folders (one subfolder of images per class), got none.")
    return sorted(folders, key=lambda p: p.name)


def _scan_class(
    root: Path, folder: Path, root_masks: dict[str, Path], lung_masks: dict[str, Path]
) -> list[_Entry]:
    image_dir = folder / _IMAGES if (folder / _IMAGES).is_dir() else folder
    local_dir = folder / _MASKS
    local_masks = _mask_index(local_dir)
    entries = []
    for path in _walk_images(image_dir, skip=local_dir):
        sid = _stem_key(path, root)
        mask = root_masks.get(sid) or local_masks.get(_stem_key(path, image_dir))
        rel = path.relative_to(root).as_posix()
        entries.append(_Entry(sid, path, folder.name, mask, rel, lung_masks.get(sid)))
    if not entries:
        raise _bad(folder, f"expected at least one image in class {folder.name!r}, got none.")
    return entries


def _scan_folder(root: Path, strict_metadata: bool = False) -> tuple[list[str], list[_Entry], list[str]]:
    folders = _class_folders(root)
    root_masks = _mask_index(root / _MASKS)
    lung_masks = _mask_index(root / _LUNG_MASKS)
    entries = [e for folder in folders for e in _scan_class(root, folder, root_masks, lung_masks)]
    names = [f.name for f in folders]
    entries, notes = _join_sidecars(root, names, entries, strict=strict_metadata)
    return names, entries, notes


def _join_sidecars(
    root: Path, classes: Sequence[str], entries: list[_Entry], *, strict: bool = False
) -> tuple[list[_Entry], list[str]]:
    """Attach the rows of ``<class>.metadata.csv|xlsx`` to the images (by ``FILE NAME``).

    An image without a row (or of a class without a sheet) gets :data:`MISSING` in every
    column, and so does an empty cell; ``strict`` (``--strict-metadata``) refuses either,
    naming the sheet and the first image. A ``URL`` column adds the ``source`` column.
    """
    tables = sidecar_tables(root, classes)
    if not tables:
        return entries, []
    absent = [c for c in classes if c not in tables]
    if absent and strict:
        raise _bad(root, f"expected a metadata table for every class (--strict-metadata), got none for "
                   f"{absent[0]!r} (have {sorted(tables)}).")
    indexes = {name: _sheet_index(path) for name, path in tables.items()}
    rows: list[dict[str, str]] = []
    unmatched: list[_Entry] = []
    for entry in entries:
        row = _sheet_row(indexes.get(entry.label, {}), entry.path)
        if row is None and strict:
            raise _bad(tables[entry.label], f"expected a row with {META_KEY} {entry.path.stem!r} for {entry.path} "
                       "(--strict-metadata), got none.")
        if row is None:
            unmatched.append(entry)
        rows.append(dict(row or {}))
    columns = sorted({k for index in indexes.values() for r in index.values() for k in r} - {META_KEY})
    columns = _add_source(rows, columns)
    typed = typed_columns(rows, columns, where=root, missing_ok=not strict,
                          line_of=lambda i: f"the row of {entries[i].rel} in {tables[entries[i].label].name}")
    notes = [f"no {name}.metadata.csv or .xlsx: the images of class {name!r} have the metadata value "
             f"{MISSING!r}" for name in absent]
    notes += _unmatched_note(unmatched, tables, absent)
    return [replace(e, metadata=tuple(t.items())) for e, t in zip(entries, typed)], notes


def _sheet_index(table: Path) -> dict[str, dict[str, str]]:
    """The rows of a metadata sheet keyed by their ``FILE NAME`` (lower case)."""
    rows = read_table(table)
    if rows and META_KEY not in rows[0]:
        raise _bad(table, f"expected a {META_KEY!r} column, got {sorted(rows[0])}.")
    return {r[META_KEY].lower(): r for r in rows if r.get(META_KEY)}


def _sheet_row(index: dict[str, dict[str, str]], image: Path) -> dict[str, str] | None:
    """The row naming ``image`` (with or without its suffix), or None."""
    return index.get(image.name.lower()) or index.get(image.stem.lower())


def _add_source(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    """Add the ``source`` column (:func:`url_source` of the ``URL`` column) to ``rows``."""
    url = next((c for c in columns if c.upper() == "URL"), None)
    if url is None or SOURCE in columns:
        return columns
    for row in rows:
        value = row.get(url, "").strip()
        row[SOURCE] = url_source(value) if value else ""
    return [*columns, SOURCE]


def _unmatched_note(unmatched: Sequence[_Entry], tables: dict[str, Path], absent: Sequence[str]) -> list[str]:
    """One note on the images without a row in their class's sheet (the first one named)."""
    rows = [e for e in unmatched if e.label not in absent]
    if not rows:
        return []
    first = rows[0]
    return [f"{len(rows)} image(s) without a row in their class's metadata sheet (first: {first.rel} in "
            f"{tables[first.label].name}): the value {MISSING!r} in every column (--strict-metadata stops instead)"]


def _manifest_path(base: Path, value: str) -> tuple[Path, str]:
    path = base / value
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        rel = Path(value).as_posix()
    return path, rel


def _is_multilabel_label(text: str) -> bool:
    return FINDING_SEP in text or not text or text.casefold() == NO_FINDING.casefold()


def _scan_manifest(
    csv_path: Path, multilabel: bool | None = None
) -> tuple[list[str], list[_Entry], list[str]]:
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise _bad(
                    csv_path,
                    f"expected a CSV header with the columns 'path' and 'label' (and optionally 'mask'), got {columns}.",
                )
            reader.fieldnames = columns
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad(
            csv_path, f"expected a UTF-8 CSV manifest, got {type(exc).__name__}: {exc}"
        ) from None
    if not rows:
        raise _bad(csv_path, "expected at least one row in the manifest, got none.")
    mask_columns = [c for c in columns if c.startswith(FINDING_MASK)]
    if multilabel is None:
        multilabel = bool(mask_columns) or any(
            _is_multilabel_label((r.get("label") or "").strip()) for r in rows
        )
    if mask_columns and not multilabel:
        raise _bad(csv_path, f"expected per-finding mask columns ({', '.join(mask_columns)}) only in a "
                   "multi-label manifest, got single-label data (pass --output multilabel).")
    entries = [
        _manifest_entry(csv_path, base, row, line, multilabel, mask_columns)
        for row, line in zip(rows, lines)
    ]
    meta = [c for c in columns if c not in _RESERVED and c not in mask_columns]
    typed = typed_columns(rows, meta, where=csv_path, line_of=lambda i: f"line {lines[i]}")
    entries = [replace(e, metadata=tuple(t.items())) for e, t in zip(entries, typed)]
    if multilabel:
        found = sorted({f for e in entries for f in e.findings or ()})
        _check_finding_masks(csv_path, mask_columns, found)
        return found, entries, []
    return sorted({e.label for e in entries}), entries, []


def _check_finding_masks(csv_path: Path, mask_columns: Sequence[str], found: Sequence[str]) -> None:
    for column in mask_columns:
        name = column[len(FINDING_MASK):]
        if name not in found:
            raise _bad(csv_path, f"expected the mask column {column!r} to name a finding of the "
                       f"labels ({', '.join(found)}), got {name!r}.")


def _parse_findings(csv_path: Path, label: str, line: int) -> tuple[str, ...]:
    """``"Effusion|Opacity"`` -> ``("Effusion", "Opacity")``; ``"No Finding"`` or ``""`` -> ()."""
    if not label or label.casefold() == NO_FINDING.casefold():
        return ()
    parts = [p.strip() for p in label.split(FINDING_SEP)]
    if any(not p for p in parts) or any(p.casefold() == NO_FINDING.casefold() for p in parts):
        raise _bad(csv_path, f"expected findings separated by {FINDING_SEP!r} (or {NO_FINDING!r} alone) on "
                   f"line {line}, got {label!r}.")
    return tuple(sorted(set(parts)))


def _manifest_entry(
    csv_path: Path,
    base: Path,
    row: dict[str, Any],
    line: int,
    multilabel: bool = False,
    mask_columns: Sequence[str] = (),
) -> _Entry:
    value = (row.get("path") or "").strip()
    label = (row.get("label") or "").strip()
    if not value or (not label and not multilabel):
        raise _bad(
            csv_path,
            f"expected a path and a label on line {line}, got path={value!r}, label={label!r}.",
        )
    path, rel = _manifest_path(base, value)
    mask_value = (row.get("mask") or "").strip()
    mask = _manifest_path(base, mask_value)[0] if mask_value else None
    kind = (row.get("mask_kind") or "").strip()
    if kind and kind not in ("lesion", "lung"):
        raise _bad(csv_path, f"expected mask_kind 'lesion' or 'lung' on line {line}, got {kind!r}.")
    sid = Path(rel).with_suffix("").as_posix()
    findings = _parse_findings(csv_path, label, line) if multilabel else None
    finding_masks: list[tuple[str, Path]] = []
    for column in mask_columns:
        cell = (row.get(column) or "").strip()
        if not cell:
            continue
        name = column[len(FINDING_MASK):]
        if findings is not None and name not in findings:
            raise _bad(csv_path, f"expected a {column!r} mask only where the label has {name!r} "
                       f"(line {line}), got it with the label {label!r}.")
        finding_masks.append((name, _manifest_path(base, cell)[0]))
    label = FINDING_SEP.join(findings) if findings else (NO_FINDING if multilabel else label)
    common = {"mask_kind": kind, "findings": findings, "finding_masks": tuple(finding_masks)}
    if kind == "lung":
        return _Entry(sid, path, label, None, rel, mask, **common)  # type: ignore[arg-type]
    return _Entry(sid, path, label, mask, rel, None, **common)  # type: ignore[arg-type]


def _check_unique_ids(entries: Sequence[_Entry]) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.id in seen:
            raise _bad(
                entry.path,
                f"expected unique sample ids, got id {entry.id!r} also used by {seen[entry.id]}.",
            )
        seen[entry.id] = entry.path


def _validate_entry(
    entry: _Entry, max_pixels: int, deep: bool, sizes: dict[Path, tuple[int, int]]
) -> None:
    """Raise DataError if the entry's image (or mask) is missing, unreadable or mismatched."""
    if not deep:
        _check_file(entry.path)
        for mask in entry.mask_files:
            _check_file(mask)
        return
    sizes[entry.path] = _probe(entry.path, max_pixels)
    for mask in entry.mask_files:
        sizes[mask] = _probe(mask, max_pixels)
        _check_mask_shape(entry.path, sizes[entry.path], mask, sizes[mask])


def _filter_bad(
    entries: Sequence[_Entry],
    *,
    max_pixels: int,
    deep: bool,
    skip: bool,
    sizes: dict[Path, tuple[int, int]],
) -> tuple[list[_Entry], list[tuple[str, str]]]:
    kept: list[_Entry] = []
    skipped: list[tuple[str, str]] = []
    for entry in entries:
        try:
            _validate_entry(entry, max_pixels, deep, sizes)
        except DataError as exc:
            if not skip:
                raise
            text = str(exc)
            prefix = next(
                (
                    f"{p}: "
                    for p in (entry.path, *entry.mask_files)
                    if text.startswith(f"{p}: ")
                ),
                "",
            )
            skipped.append((entry.rel, text[len(prefix) :]))
            continue
        kept.append(entry)
    return kept, skipped


def _declare(entries: list[_Entry], masks: str | None, where: Path) -> list[_Entry]:
    """Apply the declared mask kind to the entries' ``masks`` files (see :data:`MASK_KINDS`)."""
    if masks is None:
        return entries
    check_choice("masks", masks, MASK_KINDS)
    if masks == "none":
        return [replace(e, mask_path=None, lung_mask_path=None) for e in entries]
    clash = next((e for e in entries if e.mask_kind and e.mask_kind != masks), None)
    if clash is not None:
        raise _bad(where, f"expected mask_kind {masks!r} (--masks {masks}) for {clash.rel}, "
                   f"got {clash.mask_kind!r}.")
    if masks == "lung":
        entries = [
            replace(e, mask_path=None, lung_mask_path=e.lung_mask_path or e.mask_path)
            if e.mask_kind != "lung" else e
            for e in entries
        ]
    attr = "lung_mask_path" if masks == "lung" else "mask_path"
    if not any(getattr(e, attr) is not None for e in entries):
        raise _bad(where, f"expected {masks} masks (--masks {masks}), got no mask files.")
    return entries


def scan_layout(
    root: Path, *, masks: str | None = None, multilabel: bool | None = None, strict_metadata: bool = False
) -> tuple[str, list[str], list[_Entry], list[str]]:
    """Find the entries of a dataset folder or CSV manifest (images are not opened).

    Args:
        root: A folder with one subfolder per class (plus optional ``masks`` and
            ``lung_masks``), or a CSV manifest with the columns ``path,label[,mask,mask_kind]``
            and any metadata columns.
        masks: What the ``masks`` files are: ``"lesion"``, ``"lung"`` (lung fields) or
            ``"none"`` (ignored). Default: lesion, unless a manifest row says ``mask_kind``.
        multilabel: Read a manifest's labels as sets of findings (``A|B``, ``No Finding``).
            Default: when a label has a ``|`` or says ``No Finding``, or a ``mask.<finding>``
            column exists. A folder layout is single-label.
        strict_metadata: Refuse an image without a row (or with an empty cell) in its class's
            metadata sheet, instead of giving it the value ``missing`` there.

    Returns:
        The format (``"folder"`` or ``"manifest"``), the class names (findings) found (sorted), the
        entries (folder: class by class; manifest: row order) and notes on what was not read.

    Raises:
        DataError: missing root, another kind of file, no class folders, an empty class, a
            bad manifest, or duplicate ids.
    """
    if root.is_dir():
        if multilabel:
            raise _bad(root, "expected a CSV manifest for multi-label data (labels such as "
                       f"'Effusion{FINDING_SEP}Opacity'), got a folder per class.")
        fmt, (found, entries, notes) = "folder", _scan_folder(root, strict_metadata)
    elif root.is_file() and root.suffix.lower() == ".csv":
        fmt, (found, entries, notes) = "manifest", _scan_manifest(root, multilabel)
    elif root.exists():
        raise _bad(root, "expected a dataset folder or a .csv manifest, got another kind of file.")
    else:
        raise _bad(
            root, "expected a dataset folder or a .csv manifest, got a path that does not exist."
        )
    _check_unique_ids(entries)
    return fmt, found, _declare(entries, masks, root), notes


def _check_nonempty(root: Path, class_names: Sequence[str], entries: Sequence[_Entry]) -> None:
    present = {e.label for e in entries}
    for name in class_names:
        if name not in present:
            raise _bad(root, f"expected at least one usable image in class {name!r}, got none.")
