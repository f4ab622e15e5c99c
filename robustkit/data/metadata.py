"""Per-sample metadata: manifest columns and the spreadsheets beside a dataset's class folders.

Columns other than ``path``, ``label``, ``mask`` and ``mask_kind`` of a CSV manifest (site,
view, sex, age, source, ...) are kept per sample. In a folder layout, ``<class>.metadata.csv``
or ``<class>.metadata.xlsx`` lying beside the class folders (the COVID-19 Radiography
Database ships ``COVID.metadata.xlsx`` with ``FILE NAME, FORMAT, SIZE, URL``) is joined to the
images by its ``FILE NAME`` column (the file name with or without suffix). ``.xlsx`` is read
only when ``openpyxl`` is importable; it is not a dependency of robustkit.

Every column must have a value for every sample; a column whose values all read as integers
becomes ints, else as numbers floats, else strings.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustkit.data.imageio import _bad

__all__ = ["META_KEY", "read_table", "sidecar_tables", "typed_columns"]

#: The column of a metadata spreadsheet that names the image file.
META_KEY = "FILE NAME"

Value = int | float | str


def _has_openpyxl() -> bool:
    return importlib.util.find_spec("openpyxl") is not None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad(path, f"expected a UTF-8 CSV table, got {type(exc).__name__}: {exc}") from None


def _read_xlsx(path: Path) -> list[dict[str, str]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds on a broken file
        raise _bad(path, f"expected an .xlsx spreadsheet, got {type(exc).__name__}: {exc}") from None
    rows = [["" if v is None else str(v).strip() for v in r] for r in book.active.iter_rows(values_only=True)]
    book.close()
    if not rows:
        return []
    header = rows[0]
    return [{h: v for h, v in zip(header, r) if h} for r in rows[1:] if any(r)]


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a ``.csv`` or ``.xlsx`` table as dicts of stripped strings."""
    return _read_xlsx(path) if path.suffix.lower() == ".xlsx" else _read_csv(path)


def sidecar_tables(root: Path, classes: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """The metadata table of each class beside the class folders, and notes on those unread.

    Returns:
        ``{class: table path}`` (CSV preferred; ``.xlsx`` when openpyxl is importable) and
        one note per spreadsheet that could not be read (so nothing is dropped silently).
    """
    found: dict[str, Path] = {}
    notes: list[str] = []
    for name in classes:
        csv_path, xlsx_path = root / f"{name}.metadata.csv", root / f"{name}.metadata.xlsx"
        if csv_path.is_file():
            found[name] = csv_path
        elif xlsx_path.is_file() and _has_openpyxl():
            found[name] = xlsx_path
        elif xlsx_path.is_file():
            notes.append(f"{xlsx_path.name} not read: install openpyxl (or save it as CSV)")
    return found, notes


def _convert(values: Sequence[str]) -> list[Value]:
    for kind in (int, float):
        try:
            return [kind(v) for v in values]
        except ValueError:
            continue
    return list(values)


def typed_columns(
    rows: Sequence[Mapping[str, str]], columns: Sequence[str], *, where: Path, line_of: Any = None
) -> list[dict[str, Value]]:
    """Check that every column has a value in every row and type each column.

    Args:
        rows: One mapping per sample.
        columns: The metadata columns.
        where: The file named in errors.
        line_of: ``row index -> description`` for errors (default ``row i``).

    Raises:
        DataError: naming the file, the column and the first row without a value.
    """
    for col in columns:
        for i, row in enumerate(rows):
            if not str(row.get(col, "")).strip():
                place = line_of(i) if line_of else f"row {i + 1}"
                raise _bad(where, f"expected a value of metadata column {col!r} for every sample, got none on {place}.")
    typed = {col: _convert([str(row[col]).strip() for row in rows]) for col in columns}
    return [{col: typed[col][i] for col in columns} for i in range(len(rows))]
