"""The multi-label chest X-ray phantom: co-occurring findings, a mask per finding.

The same procedural patient as :mod:`robustkit.data.phantom`, with each of three findings
present or absent independently of the others (Bernoulli with :data:`PREVALENCE`), as in
ChestX-ray14 where one film can show several findings:

* ``Effusion``: one lung's base filled with fluid density up to a meniscus that rises
  laterally (the phantom's pleural effusion, drawn in density before exposure);
* ``Infiltration``: central, perihilar, streaky interstitial opacities (the phantom's viral
  pneumonia pattern);
* ``Opacity``: bilateral, peripheral, lower-zone ground-glass opacities (the phantom's
  COVID-19 pattern).

A film with none of them is ``No Finding``. Every present finding has its own mask (where it
was drawn), the lung-field mask is written as for the single-label phantom, and the random
stream is consumed the same way whatever findings are present, so rendering the same case
with fewer findings shows the same patient with only those findings removed. As in the
single-label phantom each image is windowed to a mean and contrast drawn independently of
its findings, so the findings cannot be read from global statistics.

Example:
    >>> import numpy as np
    >>> case = render_findings(("Effusion", "Opacity"), size=64, rng=np.random.default_rng(0))
    >>> case.findings, sorted(case.masks), case.image.shape
    (('Effusion', 'Opacity'), ['Effusion', 'Opacity'], (64, 64))
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from robustkit.data.phantom_render import (
    PHANTOM_VERSION,
    SEVERITY_RANGE,
    CaseMeta,
    _adjust_patient,
    _blur,
    _burn_site_label,
    _case_meta,
    _check_size,
    _clear_density,
    _collimate,
    _covid,
    _expose,
    _fluid,
    _sample_patient,
    _viral,
    site_name,
    site_signature,
)
from robustkit.errors import param_error

__all__ = [
    "FINDINGS",
    "NO_FINDING",
    "PREVALENCE",
    "MultiLabelCase",
    "case_findings",
    "generate_multilabel_phantom",
    "render_findings",
]

#: The findings, sorted (the manifest's ``label`` joins the present ones with ``|``).
FINDINGS: tuple[str, ...] = ("Effusion", "Infiltration", "Opacity")
NO_FINDING = "No Finding"
#: Probability that a case has each finding, drawn independently per finding.
PREVALENCE: dict[str, float] = {"Effusion": 0.3, "Infiltration": 0.4, "Opacity": 0.5}
#: Tag in the random-stream keys, apart from the single-label phantom's class indices.
_STREAM = 101
_META_COLUMNS = ("site", "view", "sex", "age")


@dataclass(frozen=True)
class MultiLabelCase:
    """One rendered multi-label phantom radiograph.

    Attributes:
        image: ``(size, size)`` uint8 grayscale radiograph (bright = dense).
        masks: ``{finding: (size, size) bool mask}`` for the present findings only.
        lungs: ``(size, size)`` bool lung-field mask.
        findings: the present findings, in :data:`FINDINGS` order (empty = No Finding).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    lungs: np.ndarray
    findings: tuple[str, ...]

    @property
    def label(self) -> str:
        """The manifest label: ``Effusion|Opacity`` or ``No Finding``."""
        return "|".join(self.findings) or NO_FINDING


def _check_findings(findings: Sequence[str]) -> tuple[str, ...]:
    if isinstance(findings, str) or any(f not in FINDINGS for f in findings):
        raise param_error("findings", f"a list of findings among {list(FINDINGS)}", findings)
    return tuple(f for f in FINDINGS if f in findings)


def render_findings(findings: Sequence[str], *, size: int, rng: np.random.Generator,
                    meta: CaseMeta | None = None) -> MultiLabelCase:
    """Render one phantom radiograph showing ``findings`` (any subset of :data:`FINDINGS`).

    Every finding's shape, place and severity are drawn whether it is present or not, so the
    same ``rng`` seed with fewer findings renders the same patient without the others.

    Args:
        findings: the findings to draw; empty for No Finding.
        size: output side in pixels, in [32, 2048].
        rng: the case's generator.
        meta: the case's site, view, sex and age; None renders without sites.

    Returns:
        A :class:`MultiLabelCase`.

    Raises:
        ConfigError: on an unknown finding, a bad size or rng.
    """
    present = _check_findings(findings)
    _check_size(size)
    if not isinstance(rng, np.random.Generator):
        raise param_error("rng", "a numpy.random.Generator", rng)
    p = _sample_patient(rng)
    if meta is not None:
        p = _adjust_patient(p, meta)
    sev = {f: float(rng.uniform(*SEVERITY_RANGE)) for f in FINDINGS}
    u, v, dens, lungs, soft_lung = _clear_density(p, size, rng)
    fields = {"Opacity": _covid(u, v, p, rng, sev["Opacity"]) * soft_lung,
              "Infiltration": _viral(u, v, p, rng, sev["Infiltration"]) * soft_lung}
    fluid = _fluid(lungs, int(rng.integers(0, 2)), 0.2 + 0.25 * sev["Effusion"])
    masks: dict[str, np.ndarray] = {}
    for name in ("Opacity", "Infiltration"):
        if name in present:
            dens = dens + (0.12 + 0.18 * sev[name]) * fields[name]
            masks[name] = (fields[name] > 0.3) & lungs
    if "Effusion" in present:
        weight = _blur(fluid.astype(np.float32), 1.5 * size / 256.0)
        dens = dens * (1.0 - 0.85 * weight) + 0.85 * weight * (p.soft + 0.17)
        masks["Effusion"] = fluid
    sig = site_signature(meta.site, meta.n_sites) if meta is not None else None
    img = _expose(_blur(dens, 0.9 * size / 256.0), p, rng, noise=sig["noise"] if sig else 1.0)
    if meta is not None and sig is not None:
        _collimate(img, sig)
        _burn_site_label(img, meta.site)
    image = np.round(img * 255.0).astype(np.uint8)
    return MultiLabelCase(image=image, masks={f: masks[f] for f in present}, lungs=lungs, findings=present)


def case_findings(seed: int, index: int) -> tuple[str, ...]:
    """The findings of case ``index`` of a multi-label phantom of ``seed`` (own stream)."""
    draws = np.random.default_rng([seed, _STREAM, index, 1]).uniform(size=len(FINDINGS))
    return tuple(f for f, d in zip(FINDINGS, draws, strict=True) if d < PREVALENCE[f])


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


def _metadata(*, seed: int, size: int, per_class: int, sites: int, sets: list[tuple[str, ...]]) -> dict[str, object]:
    info: dict[str, object] = {
        "generator": "robustkit.data.phantom_multilabel", "version": PHANTOM_VERSION, "multilabel": True,
        "seed": seed, "size": size, "per_class": per_class, "n_images": len(sets),
        "findings": list(FINDINGS), "no_finding": NO_FINDING, "prevalence": PREVALENCE,
        "prevalence_rule": "each finding present independently with its prevalence (own stream per case)",
        "expected_no_finding": float(np.prod([1 - PREVALENCE[f] for f in FINDINGS])),
        "severity_range": list(SEVERITY_RANGE), "co_occurrence": _co_occurrence(sets),
        "rng": f"image: numpy.random.default_rng([seed, {_STREAM}, index]); "
               f"findings: numpy.random.default_rng([seed, {_STREAM}, index, 1])",
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


def generate_multilabel_phantom(out_dir: Path, *, per_class: int, size: int, seed: int, sites: int = 0,
                                progress: bool = False) -> Path:
    """Write a multi-label phantom: ``4 * per_class`` images (as many as the three findings
    plus No Finding would get), findings drawn per case with :data:`PREVALENCE`.

    Files: ``images/phantom_<i:04d>.png``, ``masks/<finding>/phantom_<i:04d>.png`` (only for
    the cases with that finding, 0/255), ``lung_masks/phantom_<i:04d>.png``, ``manifest.csv``
    (``path,label,mask.Effusion,mask.Infiltration,mask.Opacity[,site,view,sex,age]``, label
    ``Effusion|Opacity`` or ``No Finding``) and ``phantom.json`` (prevalences and the counts
    of co-occurrence). Case ``i`` depends only on ``seed`` and ``i``: a smaller ``per_class``
    is a prefix of a larger one. Arguments are checked by
    :func:`robustkit.data.phantom.generate_phantom`, which calls this with ``multilabel=True``.
    """
    jobs: Sequence[int] = range(4 * per_class)
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="phantom", unit="img")
    rows, meta_rows, sets = [], [], []
    for i in jobs:
        present = case_findings(seed, i)
        meta = _case_meta(seed, _STREAM, i, sites, False) if sites else None
        case = render_findings(present, size=size, rng=np.random.default_rng([seed, _STREAM, i]), meta=meta)
        rows.append(_write_case(out_dir, f"phantom_{i:04d}", case))
        meta_rows += [meta.row()] if meta is not None else []
        sets.append(present)
    for f in FINDINGS:
        (out_dir / "masks" / f).mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, rows, meta_rows)
    info = _metadata(seed=seed, size=size, per_class=per_class, sites=sites, sets=sets)
    (out_dir / "phantom.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir
