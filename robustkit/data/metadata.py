"""Per-sample metadata: manifest columns and the spreadsheets beside a dataset's class folders.

Columns other than ``path``, ``label``, ``mask`` and ``mask_kind`` of a CSV manifest (site,
view, sex, age, source, ...) are kept per sample; every manifest row must have a value in
every column. In a folder layout, ``<class>.metadata.csv`` or ``<class>.metadata.xlsx``
lying beside the class folders (the COVID-19 Radiography Database ships
``COVID.metadata.xlsx`` with ``FILE NAME, FORMAT, SIZE, URL``) is joined to the images by its
``FILE NAME`` column (the file name with or without suffix). An image without a row in its
class's sheet, or with an empty cell, gets the value :data:`MISSING` in that column (counted
by :func:`missing_counts`; ``strict`` refuses it instead). A ``URL`` column also gives a
``source`` column, the collection the image came from (:func:`url_source`).

A column whose values (besides :data:`MISSING`) all read as integers becomes ints, else as
numbers floats, else strings.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from robustkit.data.imageio import _bad

__all__ = ["MISSING", "META_KEY", "SOURCE", "missing_counts", "read_table", "sidecar_tables", "typed_columns",
           "url_source"]

#: The column of a metadata spreadsheet that names the image file.
META_KEY = "FILE NAME"
#: The value of a sheet's column for an image without a row (or with an empty cell).
MISSING = "missing"
#: The column derived from a sheet's ``URL`` column: the image's source collection.
SOURCE = "source"
#: Hosts that serve many collections: there the source is the host and the collection's owner.
_SHARED_HOSTS = frozenset({"github.com", "gitlab.com", "bitbucket.org", "kaggle.com", "huggingface.co"})
#: Path words of those hosts that come before the owner (``kaggle.com/c/NAME``, ``/datasets/...``).
_ROUTES = frozenset({"c", "competitions", "datasets"})

Value = int | float | str


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
        with warnings.catch_warnings():  # "Workbook contains no default style": harmless, not ours to fix
            warnings.simplefilter("ignore", UserWarning)
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            rows = [["" if v is None else str(v).strip() for v in r]
                    for r in book.worksheets[0].iter_rows(values_only=True)]
        book.close()
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds on a broken file
        raise _bad(path, f"expected an .xlsx spreadsheet, got {type(exc).__name__}: {exc}") from None
    if not rows:
        return []
    header = rows[0]
    return [{h: v for h, v in zip(header, r) if h} for r in rows[1:] if any(r)]


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a ``.csv`` or ``.xlsx`` table as dicts of stripped strings."""
    return _read_xlsx(path) if path.suffix.lower() == ".xlsx" else _read_csv(path)


def sidecar_tables(root: Path, classes: Sequence[str]) -> dict[str, Path]:
    """The metadata table of each class beside the class folders: ``{class: path}``.

    ``<class>.metadata.csv`` is preferred to ``<class>.metadata.xlsx`` when both exist.
    """
    found: dict[str, Path] = {}
    for name in classes:
        for suffix in (".csv", ".xlsx"):
            path = root / f"{name}.metadata{suffix}"
            if path.is_file():
                found[name] = path
                break
    return found


def url_source(url: str) -> str:
    """The source collection named by a URL: its host, plus the owner on shared hosts.

    >>> url_source("https://github.com/ieee8023/covid-chestxray-dataset")
    'github.com/ieee8023'
    >>> url_source("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data")
    'kaggle.com/rsna-pneumonia-detection-challenge'
    >>> url_source("https://sirm.org/category/senza-categoria/covid-19/")
    'sirm.org'
    >>> url_source("missing"), url_source("Hospital A")
    ('missing', 'Hospital A')
    """
    text = url.strip()
    if "://" not in text and "." not in text.split("/")[0]:
        return text  # not a URL (MISSING, a collection's name): the value itself
    parts = urlsplit(text if "://" in text else f"//{text}")
    host = (parts.hostname or "").removeprefix("www.")
    if not host:
        return text
    if host in _SHARED_HOSTS:
        segments = [s for s in parts.path.split("/") if s]
        while segments and segments[0].lower() in _ROUTES:
            segments = segments[1:]
        if segments:
            return f"{host}/{segments[0]}"
    return host


def _convert(values: Sequence[str]) -> list[Value]:
    present = [v for v in values if v != MISSING]
    for kind in (int, float):
        try:
            typed = {v: kind(v) for v in present}
        except ValueError:
            continue
        return [typed.get(v, MISSING) for v in values]
    return list(values)


def typed_columns(
    rows: Sequence[Mapping[str, str]], columns: Sequence[str], *, where: Path, line_of: Any = None,
    missing_ok: bool = False,
) -> list[dict[str, Value]]:
    """Check that every column has a value in every row and type each column.

    Args:
        rows: One mapping per sample.
        columns: The metadata columns.
        where: The file named in errors.
        line_of: ``row index -> description`` for errors (default ``row i``).
        missing_ok: An empty value becomes :data:`MISSING` instead of an error.

    Raises:
        DataError: naming the file, the column and the first row without a value.
    """
    for col in columns:
        for i, row in enumerate(rows):
            if not str(row.get(col, "")).strip() and not missing_ok:
                place = line_of(i) if line_of else f"row {i + 1}"
                raise _bad(where, f"expected a value of metadata column {col!r} for every sample, got none on {place}.")
    typed = {col: _convert([str(row.get(col, "")).strip() or MISSING for row in rows]) for col in columns}
    return [{col: typed[col][i] for col in columns} for i in range(len(rows))]


def missing_counts(metadata: Mapping[str, Any]) -> dict[str, int]:
    """``{column: number of samples whose value is MISSING}`` for ``{column: (N,) values}``."""
    return {col: int(np.count_nonzero(np.asarray(values).astype(str) == MISSING)) for col, values in metadata.items()}
