"""Rendering of the multi-label chest X-ray phantom: co-occurring findings, a mask per finding.

The same procedural patient as :mod:`robustkit.data.phantom.render`, with each of three findings
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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robustkit.data.phantom.render import (
    SEVERITY_RANGE,
    CaseMeta,
    _adjust_patient,
    _blur,
    _burn_site_label,
    _check_size,
    _clear_density,
    _collimate,
    _covid,
    _expose,
    _fluid,
    _sample_patient,
    _viral,
    site_signature,
)
from robustkit.errors import param_error

__all__ = [
    "FINDINGS",
    "NO_FINDING",
    "PREVALENCE",
    "MultiLabelCase",
    "case_findings",
    "render_findings",
]

#: The findings, sorted (the manifest's ``label`` joins the present ones with ``|``).
FINDINGS: tuple[str, ...] = ("Effusion", "Infiltration", "Opacity")
NO_FINDING = "No Finding"
#: Probability that a case has each finding, drawn independently per finding.
PREVALENCE: dict[str, float] = {"Effusion": 0.3, "Infiltration": 0.4, "Opacity": 0.5}
#: Tag in the random-stream keys, apart from the single-label phantom's class indices.
STREAM = 101


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
    draws = np.random.default_rng([seed, STREAM, index, 1]).uniform(size=len(FINDINGS))
    return tuple(f for f, d in zip(FINDINGS, draws, strict=True) if d < PREVALENCE[f])
