"""Finding the files of a dataset: the folder and manifest layouts, and checking each entry.

Two layouts are read:

* a folder per class (the COVID-19 Radiography Database layout)::

      root/COVID-19/COVID-19_0001.png       root/masks/COVID-19/COVID-19_0001.png
      root/NORMAL/...                       (or root/<class>/masks/<stem>.png, or
      root/Viral Pneumonia/...               root/<class>/images/ + root/<class>/masks/)

* a CSV manifest with the columns ``path,label`` and an optional ``mask`` column, the paths
  relative to the folder of the CSV file.

:func:`scan_layout` finds the entries (image, label, optional mask) without decoding them;
:func:`robustkit.data.dataset.load_dataset` builds the :class:`~robustkit.data.dataset.Dataset` from them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.data.imageio import IMAGE_SUFFIXES, _bad, _check_file, _check_mask_shape, _probe
from robustkit.errors import DataError

__all__ = ["scan_layout"]

_MASKS = "masks"
_IMAGES = "images"


@dataclass(frozen=True)
class _Entry:
    id: str
    path: Path
    label: str
    mask_path: Path | None
    rel: str


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
        p for p in root.iterdir() if p.is_dir() and not _hidden(p.name) and p.name.lower() != _MASKS
    ]
    if not folders:
        raise _bad(root, "expected class folders (one subfolder of images per class), got none.")
    return sorted(folders, key=lambda p: p.name)


def _scan_class(root: Path, folder: Path, root_masks: dict[str, Path]) -> list[_Entry]:
    image_dir = folder / _IMAGES if (folder / _IMAGES).is_dir() else folder
    local_dir = folder / _MASKS
    local_masks = _mask_index(local_dir)
    entries = []
    for path in _walk_images(image_dir, skip=local_dir):
        sid = _stem_key(path, root)
        mask = root_masks.get(sid) or local_masks.get(_stem_key(path, image_dir))
        entries.append(_Entry(sid, path, folder.name, mask, path.relative_to(root).as_posix()))
    if not entries:
        raise _bad(folder, f"expected at least one image in class {folder.name!r}, got none.")
    return entries


def _scan_folder(root: Path) -> tuple[list[str], list[_Entry]]:
    folders = _class_folders(root)
    root_masks = _mask_index(root / _MASKS)
    entries = [e for folder in folders for e in _scan_class(root, folder, root_masks)]
    return [f.name for f in folders], entries


def _manifest_path(base: Path, value: str) -> tuple[Path, str]:
    path = base / value
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        rel = Path(value).as_posix()
    return path, rel


def _scan_manifest(csv_path: Path) -> tuple[list[str], list[_Entry]]:
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
            entries = [_manifest_entry(csv_path, base, row, reader.line_num) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad(
            csv_path, f"expected a UTF-8 CSV manifest, got {type(exc).__name__}: {exc}"
        ) from None
    if not entries:
        raise _bad(csv_path, "expected at least one row in the manifest, got none.")
    return sorted({e.label for e in entries}), entries


def _manifest_entry(csv_path: Path, base: Path, row: dict[str, Any], line: int) -> _Entry:
    value = (row.get("path") or "").strip()
    label = (row.get("label") or "").strip()
    if not value or not label:
        raise _bad(
            csv_path,
            f"expected a path and a label on line {line}, got path={value!r}, label={label!r}.",
        )
    path, rel = _manifest_path(base, value)
    mask_value = (row.get("mask") or "").strip()
    mask = _manifest_path(base, mask_value)[0] if mask_value else None
    return _Entry(Path(rel).with_suffix("").as_posix(), path, label, mask, rel)


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
        if entry.mask_path is not None:
            _check_file(entry.mask_path)
        return
    sizes[entry.path] = _probe(entry.path, max_pixels)
    if entry.mask_path is not None:
        mask_hw = _probe(entry.mask_path, max_pixels)
        _check_mask_shape(entry.path, sizes[entry.path], entry.mask_path, mask_hw)


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
                    for p in (entry.path, entry.mask_path)
                    if p and text.startswith(f"{p}: ")
                ),
                "",
            )
            skipped.append((entry.rel, text[len(prefix) :]))
            continue
        kept.append(entry)
    return kept, skipped


def scan_layout(root: Path) -> tuple[str, list[str], list[_Entry]]:
    """Find the entries of a dataset folder or CSV manifest (images are not opened).

    Args:
        root: A folder with one subfolder per class (plus optional ``masks``), or a CSV
            manifest with the columns ``path,label[,mask]``.

    Returns:
        The format (``"folder"`` or ``"manifest"``), the class names found (sorted) and
        the entries (folder: class by class; manifest: row order).

    Raises:
        DataError: missing root, another kind of file, no class folders, an empty class, a
            bad manifest, or duplicate ids.
    """
    if root.is_dir():
        fmt, (found, entries) = "folder", _scan_folder(root)
    elif root.is_file() and root.suffix.lower() == ".csv":
        fmt, (found, entries) = "manifest", _scan_manifest(root)
    elif root.exists():
        raise _bad(root, "expected a dataset folder or a .csv manifest, got another kind of file.")
    else:
        raise _bad(
            root, "expected a dataset folder or a .csv manifest, got a path that does not exist."
        )
    _check_unique_ids(entries)
    return fmt, found, entries


def _check_nonempty(root: Path, class_names: Sequence[str], entries: Sequence[_Entry]) -> None:
    present = {e.label for e in entries}
    for name in class_names:
        if name not in present:
            raise _bad(root, f"expected at least one usable image in class {name!r}, got none.")
