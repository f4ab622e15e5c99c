"""The chest X-ray phantom: robustkit's embedded default data (no real X-ray set is needed).

* :mod:`~robustkit.data.phantom.render`: one single-label case (anatomy, the three classes'
  findings, sites, shortcut markers);
* :mod:`~robustkit.data.phantom.multilabel`: one multi-label case (co-occurring findings, a
  mask per finding) from the same anatomy;
* :mod:`~robustkit.data.phantom.write`: :func:`generate_phantom`, the dataset writer
  (folder per class, or a multi-label manifest with ``multilabel=True``).

Example:
    >>> import numpy as np
    >>> case = render_case(0, size=64, rng=np.random.default_rng([0, 0, 0]))
    >>> case.image.shape, case.image.dtype, bool(case.mask.any())
    ((64, 64), dtype('uint8'), True)
"""

from __future__ import annotations

from robustkit.data.phantom.multilabel import (
    FINDINGS,
    NO_FINDING,
    PREVALENCE,
    MultiLabelCase,
    case_findings,
    render_findings,
)
from robustkit.data.phantom.render import (
    CLASS_NAMES,
    CONFOUND_PROBABILITY,
    PHANTOM_VERSION,
    SHORTCUT_MARKERS,
    SHORTCUT_MATCH_PROBABILITY,
    CaseMeta,
    PhantomCase,
    render_case,
    render_effusion,
    site_name,
    site_signature,
)
from robustkit.data.phantom.write import generate_phantom

__all__ = [
    "CLASS_NAMES",
    "CONFOUND_PROBABILITY",
    "FINDINGS",
    "NO_FINDING",
    "PHANTOM_VERSION",
    "PREVALENCE",
    "SHORTCUT_MARKERS",
    "SHORTCUT_MATCH_PROBABILITY",
    "CaseMeta",
    "MultiLabelCase",
    "PhantomCase",
    "case_findings",
    "generate_phantom",
    "render_case",
    "render_effusion",
    "render_findings",
    "site_name",
    "site_signature",
]
