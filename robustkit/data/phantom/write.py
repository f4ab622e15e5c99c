"""The phantom's writer: robustkit's embedded default data, written to disk.

:func:`generate_phantom` writes a folder-per-class dataset of phantom chest radiographs in
the COVID-19 Radiography Database layout (images, lesion and lung-field masks, per-case
metadata with ``sites``), or, the writer option ``multilabel=True``, a multi-label manifest
of co-occurring findings with a mask per finding. How one case is drawn is
:mod:`robustkit.data.phantom.render` (single-label) and :mod:`robustkit.data.phantom.multilabel`
(multi-label).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from robustkit.data.phantom.multilabel import (
    FINDINGS,
    NO_FINDING,
    PREVALENCE,
    STREAM,
    MultiLabelCase,
    case_findings,
    render_findings,
)
from robustkit.data.phantom.render import (
    CLASS_NAMES,
    CONFOUND_PROBABILITY,
    MAX_SITES,
    PHANTOM_VERSION,
    SEVERITY_RANGE,
    SHORTCUT_MARKERS,
    SHORTCUT_MATCH_PROBABILITY,
    _case_meta,
    _check_size,
    render_case,
    site_name,
    site_signature,
)
from robustkit.errors import check_range, param_error

__all__ = ["generate_phantom"]


def _metadata(*, seed: int, size: int, per_class: int, shortcut: bool) -> dict[str, object]:
    markers = {name: {"text": t, "corner": c} for name, (t, c) in zip(CLASS_NAMES, SHORTCUT_MARKERS, strict=True)}
    return {
        "generator": "robustkit.data.phantom",
        "version": PHANTOM_VERSION,
        "seed": seed,
        "size": size,
        "per_class": per_class,
        "shortcut": shortcut,
        "class_names": list(CLASS_NAMES),
        "severity_range": list(SEVERITY_RANGE),
        "shortcut_markers": markers,
        "shortcut_match_probability": SHORTCUT_MATCH_PROBABILITY,
        "shortcut_rule": "if shortcut: with probability shortcut_match_probability the class's own "
        "marker, otherwise one of the other classes' markers chosen uniformly",
        "rng": "numpy.random.default_rng([seed, class_index, image_index])",
    }


def generate_phantom(out_dir: str | Path, *, per_class: int, size: int = 256, seed: int = 0,
                     shortcut: bool = False, progress: bool = False, sites: int = 0,
                     confounded: bool = False, multilabel: bool = False) -> Path:
    """Write a phantom dataset in the COVID-19 Radiography Database layout.

    Files: ``out_dir/<class>/<class>_<i:04d>.png`` (8-bit grayscale),
    ``out_dir/masks/<class>/<class>_<i:04d>.png`` (lesion masks, 0/255, all zero for
    ``NORMAL``), ``out_dir/lung_masks/<class>/<class>_<i:04d>.png`` (lung-field masks, 0/255)
    and ``out_dir/phantom.json``. Case ``i`` of class ``k`` uses
    ``np.random.default_rng([seed, k, i])``, so a smaller ``per_class`` is a prefix of a
    larger one and the same arguments give byte-identical files.

    With ``sites`` >= 1 the cases also get metadata (see :class:`CaseMeta`), written to
    ``out_dir/<class>.metadata.csv`` (``FILE NAME,site,view,sex,age``: read by the folder
    layout) and to the manifest ``out_dir/manifest.csv`` (``path,label,mask,site,view,sex,age``).

    With ``multilabel=True`` the findings co-occur instead (``Effusion``, ``Infiltration``,
    ``Opacity``, each with its own mask; ``4 * per_class`` images and a ``manifest.csv`` of
    ``Effusion|Opacity``-style labels): see :func:`_write_multilabel`.

    Args:
        out_dir: output folder (created if missing).
        per_class: images per class, >= 1 (multi-label: ``4 * per_class`` images in all).
        size: image side in pixels, in [32, 2048].
        seed: non-negative int.
        shortcut: burn in class-correlated markers (see :data:`SHORTCUT_MARKERS`).
        progress: show a tqdm progress bar.
        sites: number of acquisition sites, in [0, 8]; 0 writes no metadata.
        confounded: tie class prevalence to the site (needs ``sites`` >= 2).
        multilabel: co-occurring findings with a mask per finding (not with ``shortcut``
            or ``confounded``).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: on a bad argument.
    """
    if not isinstance(out_dir, (str, Path)) or str(out_dir) == "":
        raise param_error("out_dir", "a non-empty path", out_dir)
    check_range("per_class", per_class, low=1, integer=True)
    _check_size(size)
    check_range("seed", seed, low=0, integer=True)
    flags = (("shortcut", shortcut), ("progress", progress), ("confounded", confounded), ("multilabel", multilabel))
    for name, flag in flags:
        if not isinstance(flag, bool):
            raise param_error(name, "a bool", flag)
    check_range("sites", sites, low=0, high=MAX_SITES, integer=True)
    if confounded and sites < 2:
        raise param_error("sites", "at least 2 with confounded=True", sites)
    out = Path(out_dir)
    if multilabel:
        return _multilabel(out, per_class=per_class, size=size, seed=seed, shortcut=shortcut,
                           confounded=confounded, sites=sites, progress=progress)
    jobs = [(k, i) for k in range(len(CLASS_NAMES)) for i in range(per_class)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="phantom", unit="img")
    for name in CLASS_NAMES:
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / "masks" / name).mkdir(parents=True, exist_ok=True)
        (out / "lung_masks" / name).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for k, i in jobs:
        meta = _case_meta(seed, k, i, sites, confounded) if sites else None
        case = render_case(k, size=size, rng=np.random.default_rng([seed, k, i]), shortcut=shortcut, meta=meta)
        rel = Path(CLASS_NAMES[k]) / f"{CLASS_NAMES[k]}_{i:04d}.png"
        Image.fromarray(case.image).save(out / rel)
        Image.fromarray(case.mask.astype(np.uint8) * 255).save(out / "masks" / rel)
        Image.fromarray(case.lungs.astype(np.uint8) * 255).save(out / "lung_masks" / rel)
        if meta is not None:
            rows.append({"label": CLASS_NAMES[k], "rel": rel, **meta.row()})
    if rows:
        _write_case_tables(out, rows)
    info = _metadata(seed=seed, size=size, per_class=per_class, shortcut=shortcut)
    if sites:
        info.update(sites=sites, confounded=confounded, confound_probability=CONFOUND_PROBABILITY,
                    site_signatures={site_name(s): site_signature(s, sites) for s in range(sites)})
    meta_text = json.dumps(info, indent=2, sort_keys=True)
    (out / "phantom.json").write_text(meta_text + "\n", encoding="utf-8")
    return out


def _multilabel(out: Path, *, per_class: int, size: int, seed: int, shortcut: bool, confounded: bool,
                sites: int, progress: bool) -> Path:
    """``generate_phantom(multilabel=True)``: refuse the single-label options, then write."""
    for name, flag in (("shortcut", shortcut), ("confounded", confounded)):
        if flag:
            raise param_error(name, "False with multilabel=True (class markers and class-site ties need classes)",
                              flag)
    out.mkdir(parents=True, exist_ok=True)
    return _write_multilabel(out, per_class=per_class, size=size, seed=seed, sites=sites, progress=progress)


_META_COLUMNS = ("site", "view", "sex", "age")


def _write_case_tables(out: Path, rows: list[dict[str, object]]) -> None:
    """``<class>.metadata.csv`` per class and ``manifest.csv`` for all cases."""
    import csv

    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "mask", *_META_COLUMNS])
        for r in rows:
            rel = Path(str(r["rel"]))
            w.writerow([rel.as_posix(), r["label"], (Path("masks") / rel).as_posix(), *(r[c] for c in _META_COLUMNS)])
    for name in CLASS_NAMES:
        with open(out / f"{name}.metadata.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["FILE NAME", *_META_COLUMNS])
            for r in (r for r in rows if r["label"] == name):
                w.writerow([Path(str(r["rel"])).name, *(r[c] for c in _META_COLUMNS)])


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.uint8) * 255).save(path)


def _write_case(out: Path, stem: str, case: MultiLabelCase) -> dict[str, str]:
    """Write a case's image, finding masks and lung mask; its manifest columns."""
    _save(out / "images" / f"{stem}.png", case.image)
    _save(out / "lung_masks" / f"{stem}.png", case.lungs)
    row = {"path": f"images/{stem}.png", "label": case.label}
    for f in FINDINGS:
        row[f"mask.{f}"] = f"masks/{f}/{stem}.png" if f in case.masks else ""
        if f in case.masks:
            _save(out / "masks" / f / f"{stem}.png", case.masks[f])
    return row


def _co_occurrence(sets: list[tuple[str, ...]]) -> dict[str, object]:
    """Counts: per finding, per pair, per number of findings, and per label."""
    labels: dict[str, int] = {}
    for s in sets:
        key = "|".join(s) or NO_FINDING
        labels[key] = labels.get(key, 0) + 1
    return {
        "n_images": len(sets),
        "per_finding": {f: sum(f in s for s in sets) for f in FINDINGS},
        "pairs": {f"{a}|{b}": sum(a in s and b in s for s in sets) for a, b in combinations(FINDINGS, 2)},
        "per_number_of_findings": {str(k): sum(len(s) == k for s in sets) for k in range(len(FINDINGS) + 1)},
        "labels": dict(sorted(labels.items())),
    }


def _multilabel_metadata(*, seed: int, size: int, per_class: int, sites: int, sets: list[tuple[str, ...]]) -> dict[str, object]:
    info: dict[str, object] = {
        "generator": "robustkit.data.phantom (multilabel=True)", "version": PHANTOM_VERSION, "multilabel": True,
        "seed": seed, "size": size, "per_class": per_class, "n_images": len(sets),
        "findings": list(FINDINGS), "no_finding": NO_FINDING, "prevalence": PREVALENCE,
        "prevalence_rule": "each finding present independently with its prevalence (own stream per case)",
        "expected_no_finding": float(np.prod([1 - PREVALENCE[f] for f in FINDINGS])),
        "severity_range": list(SEVERITY_RANGE), "co_occurrence": _co_occurrence(sets),
        "rng": f"image: numpy.random.default_rng([seed, {STREAM}, index]); "
               f"findings: numpy.random.default_rng([seed, {STREAM}, index, 1])",
    }
    if sites:
        info.update(sites=sites, site_signatures={site_name(s): site_signature(s, sites) for s in range(sites)})
    return info


def _write_manifest(out: Path, rows: list[dict[str, str]], meta_rows: list[dict[str, object]]) -> None:
    columns = ["path", "label", *(f"mask.{f}" for f in FINDINGS), *(_META_COLUMNS if meta_rows else ())]
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({**row, **(meta_rows[i] if meta_rows else {})})


def _write_multilabel(out_dir: Path, *, per_class: int, size: int, seed: int, sites: int = 0,
                      progress: bool = False) -> Path:
    """Write a multi-label phantom: ``4 * per_class`` images (as many as the three findings
    plus No Finding would get), findings drawn per case with :data:`PREVALENCE`.

    Files: ``images/phantom_<i:04d>.png``, ``masks/<finding>/phantom_<i:04d>.png`` (only for
    the cases with that finding, 0/255), ``lung_masks/phantom_<i:04d>.png``, ``manifest.csv``
    (``path,label,mask.Effusion,mask.Infiltration,mask.Opacity[,site,view,sex,age]``, label
    ``Effusion|Opacity`` or ``No Finding``) and ``phantom.json`` (prevalences and the counts
    of co-occurrence). Case ``i`` depends only on ``seed`` and ``i``: a smaller ``per_class``
    is a prefix of a larger one. Arguments are checked by :func:`generate_phantom`, which calls
    this with ``multilabel=True``.
    """
    jobs: Sequence[int] = range(4 * per_class)
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="phantom", unit="img")
    rows, meta_rows, sets = [], [], []
    for i in jobs:
        present = case_findings(seed, i)
        meta = _case_meta(seed, STREAM, i, sites, False) if sites else None
        case = render_findings(present, size=size, rng=np.random.default_rng([seed, STREAM, i]), meta=meta)
        rows.append(_write_case(out_dir, f"phantom_{i:04d}", case))
        meta_rows += [meta.row()] if meta is not None else []
        sets.append(present)
    for f in FINDINGS:
        (out_dir / "masks" / f).mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, rows, meta_rows)
    info = _multilabel_metadata(seed=seed, size=size, per_class=per_class, sites=sites, sets=sets)
    (out_dir / "phantom.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
