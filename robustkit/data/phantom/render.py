"""Rendering of the chest X-ray phantom (robustkit's embedded default data): one case at a time.

:mod:`robustkit.data.phantom.write` writes datasets of these cases (folder per class, masks,
metadata); :mod:`robustkit.data.phantom.multilabel` draws the multi-label cases from the same
anatomy and findings.

No real chest X-ray set can be downloaded where robustkit is built and tested, so the demo
and the tests use this phantom: a posteroanterior (PA) chest radiograph drawn from smooth
shapes (thorax outline, two dark lung fields, heart and mediastinum, posterior ribs,
clavicles, diaphragm domes, spine), with patient-to-patient variation (size, position,
a few degrees of rotation, habitus, exposure, quantum noise, film grain) and one finding
per class:

* ``COVID-19``: bilateral, peripheral, lower-zone ground-glass opacities;
* ``NORMAL``: clear lungs;
* ``Viral Pneumonia``: central, perihilar, streaky interstitial opacities.

Every case comes with a lesion mask (empty for ``NORMAL``, always inside the lung fields)
so that saliency localisation can be measured. Each image is windowed to a global mean
and standard deviation drawn independently of the class, so the class cannot be read
from global statistics; it has to be read from where and what the opacities are.

With ``shortcut=True`` a burned-in text marker is drawn in a corner (see
:data:`SHORTCUT_MARKERS`): with probability :data:`SHORTCUT_MATCH_PROBABILITY` it is the
marker of the case's own class, otherwise the marker of one of the two other classes,
chosen uniformly. A model can learn the marker instead of the lungs; audits show that.

With ``sites=N`` every case also gets metadata (:class:`CaseMeta`: site ``A``, ``B``, ...,
view ``PA``/``AP``, sex, age), drawn from its own stream so that the patient is the same
one as without sites. Each site has an acquisition signature (:func:`site_signature`: a
sub-range of exposure, gamma and contrast, a noise level, collimation borders and a
burned-in site label in the bottom-right corner); an AP view magnifies the heart (the
heart is farther from the detector); sex and age change habitus and heart size. Sites are
balanced (case ``i`` of every class at site ``i mod N``) unless ``confounded``: then a case
of class ``k`` is at site ``k mod N`` with probability :data:`CONFOUND_PROBABILITY`, as in
the public database where COVID-19 and normal images come from different sources
(DeGrave et al. 2021).

Example:
    >>> import numpy as np
    >>> case = render_case(0, size=64, rng=np.random.default_rng([0, 0, 0]))
    >>> case.image.shape, case.image.dtype, bool(case.mask.any())
    ((64, 64), dtype('uint8'), True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from robustkit.errors import check_range, param_error

__all__ = [
    "CLASS_NAMES",
    "CONFOUND_PROBABILITY",
    "CaseMeta",
    "PHANTOM_VERSION",
    "SHORTCUT_MARKERS",
    "SHORTCUT_MATCH_PROBABILITY",
    "PhantomCase",
    "render_case",
    "render_effusion",
    "site_name",
    "site_signature",
]

CLASS_NAMES: tuple[str, ...] = ("COVID-19", "NORMAL", "Viral Pneumonia")
PHANTOM_VERSION = "1"
SEVERITY_RANGE = (0.25, 1.0)
#: Marker text and corner for each class, in CLASS_NAMES order.
SHORTCUT_MARKERS: tuple[tuple[str, str], ...] = (("C", "top-left"), ("N", "top-right"), ("V", "bottom-left"))
SHORTCUT_MATCH_PROBABILITY = 0.9
#: With ``confounded=True``, the probability that a case of class k is at site ``k mod N``.
CONFOUND_PROBABILITY = 0.85
MAX_SITES = 8

_GLYPHS = {  # 5x7 bitmap letters, '#' = lit
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "N": ("#...#", "##..#", "#.#.#", "#.#.#", "#..##", "#...#", "#...#"),
    "V": ("#...#", "#...#", "#...#", "#...#", ".#.#.", ".#.#.", "..#.."),
}


@dataclass(frozen=True)
class PhantomCase:
    """One rendered phantom radiograph.

    Attributes:
        image: ``(size, size)`` uint8 grayscale radiograph (bright = dense).
        mask: ``(size, size)`` bool lesion mask; all False for ``NORMAL``.
        lungs: ``(size, size)`` bool lung-field mask.
        severity: the finding's severity in [0, 1] (drawn but unused for ``NORMAL``).
        label: the class index into :data:`CLASS_NAMES`.
    """

    image: np.ndarray
    mask: np.ndarray
    lungs: np.ndarray
    severity: float
    label: int


@dataclass(frozen=True)
class CaseMeta:
    """Who and where a case comes from (``generate_phantom(sites=N)``).

    Attributes:
        site: site index in ``[0, n_sites)`` (written as ``A``, ``B``, ...).
        n_sites: number of sites of the set.
        view: ``PA`` or ``AP`` (AP magnifies the heart).
        sex: ``F`` or ``M``.
        age: years.
    """

    site: int
    n_sites: int
    view: str = "PA"
    sex: str = "F"
    age: int = 50

    def row(self) -> dict[str, object]:
        """The metadata columns written for the case."""
        return {"site": site_name(self.site), "view": self.view, "sex": self.sex, "age": self.age}


def site_name(site: int) -> str:
    """``0 -> 'A'``, ``1 -> 'B'``, ..."""
    return chr(ord("A") + int(site))


@dataclass(frozen=True)
class _Patient:
    scale: float
    shift: tuple[float, float]
    angle: float
    habitus: float  # thorax width factor
    soft: float  # soft-tissue brightness
    lung_w: float
    lung_h: float
    heart: float  # heart size factor
    dome: tuple[float, float]  # right, left dome apex height (v)
    rib_phase: float
    rib_spacing: float
    clav: float
    gamma: float
    target_mean: float
    target_std: float


def _sample_patient(rng: np.random.Generator) -> _Patient:
    u = rng.uniform(size=17)
    return _Patient(
        scale=0.92 + 0.14 * u[0],
        shift=(0.06 * (u[1] - 0.5), 0.06 * (u[2] - 0.5)),
        angle=np.deg2rad(8.0 * (u[3] - 0.5)),
        habitus=0.9 + 0.2 * u[4],
        soft=0.38 + 0.14 * u[5],
        lung_w=0.92 + 0.14 * u[6],
        lung_h=0.93 + 0.12 * u[7],
        heart=0.9 + 0.22 * u[8],
        dome=(0.175 + 0.04 * u[9], 0.195 + 0.04 * u[10]),
        rib_phase=0.3 * u[11],
        rib_spacing=0.95 + 0.1 * u[12],
        clav=-0.29 + 0.03 * u[13],
        gamma=0.75 + 0.6 * u[14],
        target_mean=0.36 + 0.16 * u[15],
        target_std=0.17 + 0.08 * u[16],
    )


# ----------------------------------------------------------------------------- helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _box_blur_axis(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    if radius < 1:
        return a
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / (2 * radius + 1)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Approximate Gaussian blur (two box passes per axis), sigma in pixels."""
    radius = int(round(np.sqrt(1.5 * sigma * sigma + 1.0) - 0.5)) if sigma > 0.6 else 0
    if radius < 1:
        return a
    out = a
    for axis in (0, 1):
        for _ in range(2):
            out = _box_blur_axis(out, radius, axis)
    return out


def _shifts(m: np.ndarray) -> list[np.ndarray]:
    p = np.pad(m, 1)
    return [p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]]


def _open(m: np.ndarray) -> np.ndarray:
    """Binary opening with a 3x3 cross: drops specks and slivers thinner than 3 pixels."""
    eroded = m & np.logical_and.reduce(_shifts(m))
    return m & (eroded | np.logical_or.reduce(_shifts(eroded)))


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _coords(size: int, p: _Patient) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (u to the image right, v down), image spanning [-0.5, 0.5]."""
    t = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    x, y = np.meshgrid(t - p.shift[0], t - p.shift[1])
    c, s = np.float32(np.cos(p.angle)), np.float32(np.sin(p.angle))
    return (c * x + s * y) / p.scale, (-s * x + c * y) / p.scale


def _superellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, pw: float) -> np.ndarray:
    return np.abs((u - cx) / rx) ** pw + np.abs((v - cy) / ry) ** pw


# ----------------------------------------------------------------------------- anatomy


def _lung_geometry(p: _Patient) -> list[tuple[float, float, float, float]]:
    """(cx, cy, rx, ry) of the patient's right (image left) and left lung superellipses."""
    rx, ry = 0.135 * p.lung_w * p.habitus, 0.34 * p.lung_h
    return [(-0.175 * p.habitus, -0.05, rx, ry), (0.18 * p.habitus, -0.045, rx * 0.98, ry)]


def _lung_rx(v: np.ndarray | float, cy: float, ry: float, rx: float) -> np.ndarray | float:
    """Lung half-width at height ``v``: the bases are wider than the apices."""
    return rx * (0.88 + 0.2 * np.clip((v - cy) / ry + 0.5, 0.0, 1.2))


def _lung_field(u: np.ndarray, v: np.ndarray, geom: tuple[float, float, float, float]) -> np.ndarray:
    cx, cy, rx, ry = geom
    return np.abs((u - cx) / _lung_rx(v, cy, ry, rx)) ** 2.3 + np.abs((v - cy) / ry) ** 2.3


def _dome(u: np.ndarray, p: _Patient) -> np.ndarray:
    """v of the diaphragm surface under each column (higher dome = smaller v)."""
    right = p.dome[0] + 2.0 * (u + 0.15 * p.habitus) ** 2
    left = p.dome[1] + 2.0 * (u - 0.16 * p.habitus) ** 2
    return np.where(u < 0, right, left)


def _heart_field(u: np.ndarray, v: np.ndarray, p: _Patient) -> np.ndarray:
    a = np.deg2rad(-15.0)
    du, dv = u - 0.045 * p.heart, v - 0.13
    hu, hv = np.cos(a) * du + np.sin(a) * dv, -np.sin(a) * du + np.cos(a) * dv
    return (hu / (0.17 * p.heart)) ** 2 + (hv / (0.115 * p.heart)) ** 2


def _central(u: np.ndarray, v: np.ndarray, p: _Patient) -> np.ndarray:
    """Heart, mediastinum and aortic knob (bool)."""
    heart = _heart_field(u, v, p) <= 1.0
    width = 0.06 + 0.025 * _smoothstep((-0.1 - v) / 0.2)  # mediastinum widens at the top
    medi = (np.abs(u - 0.008) < width) & (v < 0.2)
    knob = (u - 0.06) ** 2 + (v + 0.16) ** 2 < 0.036**2
    return heart | medi | knob


def _anatomy(u: np.ndarray, v: np.ndarray, p: _Patient, px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unblurred density map (about [0, 1]), hard lung mask, soft lung weight, central mask."""
    dome = _dome(u, p)
    shell = _superellipse(u, v, 0.0, 0.18, 0.42 * p.habitus, 0.63, 4.0)
    neck = (np.abs(u) < 0.09) & (v < -0.2)
    body = (shell <= 1.0) | neck
    body_soft = np.maximum(_smoothstep((1.0 - shell) / 0.25), neck)
    central = _central(u, v, p)
    lungs = np.zeros(u.shape, dtype=bool)
    for geom in _lung_geometry(p):
        lungs |= _lung_field(u, v, geom) <= 1.0
    below_heart = (np.abs(u - 0.045 * p.heart) < 0.15 * p.heart) & (v > 0.13)  # heart sits on the dome
    lungs = _open(lungs & (v < dome) & ~(central | below_heart) & body)
    soft_lung = _blur(lungs.astype(np.float32), 1.0 * px)
    dens = 0.04 + (p.soft - 0.04) * body_soft
    dens += np.where(central, np.float32(0.28), np.where(body & (v >= dome), np.float32(0.17), np.float32(0.0)))
    trachea = (np.abs(u - 0.004) < 0.014) & (v < -0.1) & (v > -0.5)
    dens -= 0.07 * trachea
    lung_val = 0.1 + 0.07 * _smoothstep((v + 0.2) / 0.45) + 0.04 * _smoothstep((-0.3 - v) / 0.1)
    dens = np.where(lungs, lung_val, dens)
    return dens, lungs, soft_lung, central


def _bones(u: np.ndarray, v: np.ndarray, p: _Patient, soft_lung: np.ndarray, central: np.ndarray) -> np.ndarray:
    """Additive density of spine, posterior and anterior ribs and clavicles."""
    au = np.abs(u)
    spine = _smoothstep((0.034 - au) / 0.008) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.05))
    a = (au - 0.03) / (0.38 * p.habitus)
    q = v + 0.05 * a - 0.24 * a * a - p.rib_phase * 0.05 + 0.38
    s = (np.clip(q, 0.0, None) / (0.05 * p.rib_spacing)) ** 0.95
    frac = s - np.floor(s)
    thick = 0.34 + 0.02 * s
    band = _smoothstep(frac / 0.08) * _smoothstep((thick - frac) / 0.08)
    edge = 0.6 + 0.4 * (np.abs(frac - thick / 2) / (thick / 2)) ** 2
    ribs = band * edge * (s < 10.5) * (a > 0) * _smoothstep((1.08 - a) / 0.15)
    qa = v - 0.16 * (1.0 - np.clip(a, 0, 1)) ** 2 + 0.3
    fa = qa / 0.075 - np.floor(qa / 0.075)
    ant = _smoothstep(fa / 0.1) * _smoothstep((0.4 - fa) / 0.1) * (qa > 0) * (qa < 0.45)
    ca = (au - 0.03) / 0.27
    cv = p.clav - 0.05 * ca + 0.015 * np.sin(2 * np.pi * ca)
    clav = _smoothstep((0.016 - np.abs(v - cv)) / 0.006) * (ca > 0) * _smoothstep((1.05 - ca) / 0.1)
    return (0.07 * spine * (1.0 - 0.5 * central) + 0.11 * ribs * (0.2 + 0.8 * soft_lung)
            + 0.035 * ant * soft_lung + 0.16 * clav)


def _lung_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.clip(_lowfreq(rng, size, 28), -2.0, 2.0)


def _hila(p: _Patient) -> list[tuple[float, float, float]]:
    """(u, v, outward direction sign) of the right and left hilum."""
    return [(-0.075 * p.habitus, -0.03, -1.0), (0.08 * p.habitus, -0.04, 1.0)]


def _rays(u: np.ndarray, v: np.ndarray, hilum: tuple[float, float, float], angles: np.ndarray,
          lengths: np.ndarray, widths: np.ndarray, bends: np.ndarray) -> np.ndarray:
    """Tapering, slightly bent lines radiating from a hilum, max-combined; shape of ``u``."""
    du, dv = u[None] - np.float32(hilum[0]), v[None] - np.float32(hilum[1])
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    along = du * cos + dv * sin
    perp = dv * cos - du * sin - bends[:, None, None] * along * along
    t = np.clip(along / lengths[:, None, None], 0.0, 1.0)
    z = perp / (widths[:, None, None] * (1.0 - 0.6 * t))
    ramp = np.minimum(t * 10.0, (1.0 - t) * 2.5)
    line = np.exp(-0.5 * z * z) * np.minimum(ramp, 1.0)
    return line.max(axis=0)


def _ray_params(rng: np.random.Generator, n: int, side: float, spread: float, length: tuple[float, float],
                width: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    base = np.pi if side < 0 else 0.0
    angles = base + side * rng.uniform(-spread, spread, n)
    params = (angles, rng.uniform(*length, n), rng.uniform(*width, n), rng.uniform(-1.5, 1.5, n))
    return tuple(x.astype(np.float32) for x in params)  # type: ignore[return-value]


def _crop(p: _Patient, size: int, hilum: tuple[float, float, float]) -> tuple[slice, slice]:
    """Pixel window holding every ray of a hilum (rays point outwards, at most 0.27 long)."""
    side = hilum[2]
    us = sorted((hilum[0] - 0.07 * side, hilum[0] + 0.3 * side))
    vs = (hilum[1] - 0.3, hilum[1] + 0.3)
    xs = (np.array(us) * p.scale + p.shift[0] + 0.5) * size
    ys = (np.array(vs) * p.scale + p.shift[1] + 0.5) * size
    lo_x, hi_x = (int(np.clip(x, 0, size)) for x in (xs[0], xs[1] + 1))
    lo_y, hi_y = (int(np.clip(y, 0, size)) for y in (ys[0], ys[1] + 1))
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def _vessels(u: np.ndarray, v: np.ndarray, p: _Patient, rng: np.random.Generator) -> np.ndarray:
    """Normal lung markings: thin vessels fanning out of both hila."""
    out = np.zeros(u.shape, dtype=np.float32)
    for hilum in _hila(p):
        params = _ray_params(rng, 9, hilum[2], 1.1, (0.12, 0.22), (0.003, 0.006))
        ys, xs = _crop(p, u.shape[0], hilum)
        out[ys, xs] = np.maximum(out[ys, xs], _rays(u[ys, xs], v[ys, xs], hilum, *params))
        out += 0.5 * np.exp(-((u - hilum[0]) ** 2 + (v - hilum[1]) ** 2) / (2 * 0.022**2))
    return out


# ----------------------------------------------------------------------------- findings


def _covid(u: np.ndarray, v: np.ndarray, p: _Patient, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Unit-amplitude ground-glass field: soft blobs along the lower outer lung borders."""
    n_per = 5
    draws = rng.uniform(size=(2, n_per, 4))
    texture = 0.8 + 0.2 * np.clip(_lowfreq(rng, u.shape[0], 12), -1, 1)
    active = 2 + int(round(3 * severity))
    field = np.ones(u.shape, dtype=np.float32)
    for side, (cx, cy, rx, ry) in enumerate(_lung_geometry(p)):
        for k in range(active):
            d = draws[side, k]
            cvv = cy + ry * (0.1 + 0.55 * d[0])
            half = float(_lung_rx(cvv, cy, ry, rx)) * max(1.0 - abs((cvv - cy) / ry) ** 2.3, 0.0) ** (1 / 2.3)
            r = (0.035 + 0.03 * d[1]) * (0.75 + 0.5 * severity)
            cu = cx + np.sign(cx) * (half - r * (0.7 + 0.6 * d[2]))
            g = np.exp(-(((u - cu) ** 2 + ((v - cvv) / (1.0 + 0.6 * d[3])) ** 2) / (2 * r * r)) ** 1.6)
            field *= 1.0 - 0.9 * g
    return (1.0 - field) * texture


def _viral(u: np.ndarray, v: np.ndarray, p: _Patient, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Unit-amplitude perihilar field: streaks radiating from both hila plus reticular haze."""
    size = u.shape[0]
    reticular = np.clip(_lowfreq(rng, size, 48), -1.5, 1.5)
    out = np.zeros(u.shape, dtype=np.float32)
    for hilum in _hila(p):
        params = _ray_params(rng, 16, hilum[2], 1.25, (0.09, 0.19), (0.006, 0.012))
        params = (params[0], params[1] * (0.8 + 0.3 * severity), params[2], params[3])
        ys, xs = _crop(p, size, hilum)
        streak = _rays(u[ys, xs], v[ys, xs], hilum, *params)
        du, dv = u[ys, xs] - hilum[0], v[ys, xs] - hilum[1]
        haze = np.exp(-(du**2 / (2 * 0.07**2) + dv**2 / (2 * 0.1**2)))
        out[ys, xs] = np.maximum(out[ys, xs], 0.85 * streak + haze * (0.35 + 0.25 * reticular[ys, xs]))
    return np.clip(out, 0.0, 1.2)


# ----------------------------------------------------------------------------- acquisition


def _expose(dens: np.ndarray, p: _Patient, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """Gamma, window to a class-independent target mean/std, quantum noise and film grain."""
    img = np.clip(dens, 0.0, None) ** p.gamma
    img = (img - img.mean()) / max(img.std(), 1e-6) * p.target_std + p.target_mean
    quantum, grain = rng.uniform(0.008, 0.025) * noise, rng.uniform(0.005, 0.015) * noise
    img = img + quantum * np.sqrt(np.clip(img, 0.0, 1.0)) * rng.standard_normal(img.shape)
    fine = _lowfreq(rng, img.shape[0], max(8, img.shape[0] // 2))
    img = img + grain * fine / max(float(fine.std()), 1e-6)
    return np.clip(img, 0.0, 1.0)


def _burn_marker(img: np.ndarray, label: int, rng: np.random.Generator) -> None:
    """Draw a class-correlated letter marker (in place); see SHORTCUT_MARKERS."""
    others = [k for k in range(len(CLASS_NAMES)) if k != label]
    match = rng.uniform() < SHORTCUT_MATCH_PROBABILITY
    shown = label if match else others[int(rng.integers(len(others)))]
    text, corner = SHORTCUT_MARKERS[shown]
    size = img.shape[0]
    cell = max(1, int(round(size / 64)))
    glyph = np.array([[c == "#" for c in row] for row in _GLYPHS[text]])
    lit = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    h, w = lit.shape
    m = max(cell, int(round(0.03 * size)))
    y0 = m if corner.startswith("top") else size - m - h
    x0 = m if corner.endswith("left") else size - m - w
    img[y0 - cell:y0 + h + cell, x0 - cell:x0 + w + cell] = 0.02
    img[y0:y0 + h, x0:x0 + w][lit] = 1.0


# ----------------------------------------------------------------------------- sites


def site_signature(site: int, n_sites: int) -> dict[str, float]:
    """The acquisition signature of a site: where in the population's ranges its images lie.

    ``gamma``, ``mean`` and ``std`` are the site's position in [0, 1] within the patient
    ranges of gamma, target mean and target contrast (each site gets its own third of the
    range, cycling), ``noise`` multiplies quantum noise and grain, ``collimation`` is the
    dark border's share of the side (0 for none) and ``borders`` 1 for top/bottom only,
    2 for all four sides.
    """
    third = (site % 3) / 3.0
    return {
        "gamma": (third + 0.05) % 1.0,
        "mean": ((site + 1) % 3) / 3.0,
        "std": ((site + 2) % 3) / 3.0,
        "noise": 0.7 + 0.6 * (site % 4) / 3.0,
        "collimation": 0.0 if site % 2 == 0 else 0.04 + 0.01 * (site % 3),
        "borders": 1.0 + float(site % 3 == 1),
    }


def _in_third(value: float, low: float, width: float, pos: float) -> float:
    """Map ``value`` from ``[low, low + width]`` into the third of that range starting at ``pos``."""
    return low + width * (pos + (value - low) / width / 3.0)


def _adjust_patient(p: _Patient, meta: CaseMeta) -> _Patient:
    """The same patient seen at ``meta``'s site, in its view, with its sex and age."""
    sig = site_signature(meta.site, meta.n_sites)
    male = meta.sex == "M"
    heart = p.heart * (1.15 if meta.view == "AP" else 1.0) * (1.0 + 0.003 * (meta.age - 50))
    return replace(
        p,
        habitus=p.habitus * (1.05 if male else 0.96),
        soft=p.soft + (0.03 if meta.age > 60 else 0.0) - (0.02 if male else 0.0),
        heart=heart,
        scale=p.scale * (1.03 if meta.view == "AP" else 1.0),
        gamma=_in_third(p.gamma, 0.75, 0.6, sig["gamma"] * 2 / 3),
        target_mean=_in_third(p.target_mean, 0.36, 0.16, sig["mean"]),
        target_std=_in_third(p.target_std, 0.17, 0.08, sig["std"]),
    )


def _collimate(img: np.ndarray, sig: dict[str, float]) -> None:
    """Dark collimation borders (in place)."""
    b = int(round(sig["collimation"] * img.shape[0]))
    if b < 1:
        return
    img[:b], img[-b:] = 0.03, 0.03
    if sig["borders"] > 1:
        img[:, :b], img[:, -b:] = 0.03, 0.03


def _burn_site_label(img: np.ndarray, site: int) -> None:
    """A burned-in site label in the bottom-right corner: ``site + 1`` in binary as lit squares."""
    size = img.shape[0]
    cell = max(1, int(round(size / 64)))
    m = max(cell, int(round(0.04 * size))) + int(round(0.06 * size))
    bits = [(site + 1) >> j & 1 for j in range(3)]
    y0 = size - m - 2 * cell
    for j, bit in enumerate(bits):
        x0 = size - m - (j + 1) * 3 * cell
        img[y0:y0 + 2 * cell, x0:x0 + 2 * cell] = 0.95 if bit else 0.12


def _case_meta(seed: int, label: int, index: int, n_sites: int, confounded: bool) -> CaseMeta:
    """Site, view, sex and age of case ``index`` of class ``label`` (own random stream)."""
    rng = np.random.default_rng([seed, label, index, 7919])
    u = rng.uniform(size=4)
    if confounded:
        home = label % n_sites
        others = [s for s in range(n_sites) if s != home]
        site = home if u[0] < CONFOUND_PROBABILITY or not others else others[int(u[1] * len(others))]
    else:
        site = index % n_sites
    age = int(np.clip(round(55 + 17 * rng.standard_normal()), 18, 95))
    return CaseMeta(site=site, n_sites=n_sites, view="AP" if u[2] < 0.3 else "PA",
                    sex="M" if u[3] < 0.5 else "F", age=age)


def _clear_density(p: _Patient, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(u, v, density, lungs, soft_lung)`` of the patient with clear lungs (no finding yet):
    anatomy, bones, vessels and lung texture (draws the vessels and the texture from ``rng``)."""
    u, v = _coords(size, p)
    dens, lungs, soft_lung, central = _anatomy(u, v, p, size / 256.0)
    dens += _bones(u, v, p, soft_lung, central)
    dens += soft_lung * (0.07 * _vessels(u, v, p, rng) + 0.015 * _lung_texture(rng, size))
    return u, v, dens, lungs, soft_lung


def _fluid(lungs: np.ndarray, side: int, frac: float) -> np.ndarray:
    """Bool ``(S, S)``: a pleural effusion in one lung's base (``side`` 0: image left, 1: right)
    filling ``frac`` of the lung's height up to a meniscus that rises laterally (blunted
    costophrenic angle, as on an erect film); empty if that lung has no pixels."""
    size = lungs.shape[0]
    cols = np.arange(size)
    lung = lungs & ((cols[None, :] >= size // 2) == bool(side))
    rows, cs = np.nonzero(lung)
    if not len(rows):
        return lung
    top, bottom = rows.min(), rows.max()
    height = bottom - top + 1
    medial, lateral = (cs.max(), cs.min()) if side == 0 else (cs.min(), cs.max())
    reach = np.clip((cols - medial) / (lateral - medial if lateral != medial else 1), 0.0, 1.0)
    level = bottom - frac * height - 0.2 * height * reach**2  # meniscus: higher at the chest wall
    return lung & (np.arange(size)[:, None] >= level[None, :])


# ----------------------------------------------------------------------------- public API


def _check_size(size: object) -> None:
    check_range("size", size, low=32, high=2048, integer=True)


def render_case(label: int, *, size: int, rng: np.random.Generator, shortcut: bool = False,
                severity: float | None = None, meta: CaseMeta | None = None) -> PhantomCase:
    """Render one phantom radiograph of class ``label``.

    The random stream is consumed the same way whatever ``severity`` and ``shortcut`` are,
    so a case rendered with ``severity=0.0`` shows the same patient without the finding, and
    ``shortcut=True`` changes only the marker's corner.

    Args:
        label: class index into :data:`CLASS_NAMES`.
        size: output side in pixels, in [32, 2048].
        rng: the case's generator, e.g. ``np.random.default_rng([seed, label, index])``.
        shortcut: burn in a class-correlated marker (see :data:`SHORTCUT_MARKERS`).
        severity: finding severity in [0, 1]; drawn from U(0.25, 1) when None.
        meta: the case's site, view, sex and age (:class:`CaseMeta`); None renders the
            phantom without sites (the same random stream is used either way).

    Returns:
        A :class:`PhantomCase` with ``(size, size)`` image, lesion mask and lung mask.

    Raises:
        ConfigError: on a bad label, size, severity or rng.
    """
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(CLASS_NAMES):
        raise param_error("label", f"an int in [0, {len(CLASS_NAMES) - 1}]", label)
    _check_size(size)
    if not isinstance(rng, np.random.Generator):
        raise param_error("rng", "a numpy.random.Generator", rng)
    if severity is not None:
        check_range("severity", severity, low=0.0, high=1.0)
    label = int(label)
    p = _sample_patient(rng)
    if meta is not None:
        p = _adjust_patient(p, meta)
    drawn = float(rng.uniform(*SEVERITY_RANGE))
    sev = drawn if severity is None else float(severity)
    px = size / 256.0
    u, v, dens, lungs, soft_lung = _clear_density(p, size, rng)
    mask = np.zeros((size, size), dtype=bool)
    if label != 1:
        finding = (_covid if label == 0 else _viral)(u, v, p, rng, sev) * soft_lung
        dens += (0.12 + 0.18 * sev if sev > 0 else 0.0) * finding
        if sev > 0:
            mask = (finding > 0.3) & lungs
    sig = site_signature(meta.site, meta.n_sites) if meta is not None else None
    img = _expose(_blur(dens, 0.9 * px), p, rng, noise=sig["noise"] if sig else 1.0)
    if shortcut:
        _burn_marker(img, label, rng)
    if meta is not None and sig is not None:
        _collimate(img, sig)
        _burn_site_label(img, meta.site)
    image = np.round(img * 255.0).astype(np.uint8)
    return PhantomCase(image=image, mask=mask, lungs=lungs, severity=sev, label=label)


def render_effusion(*, size: int, rng: np.random.Generator, fraction: float | None = None) -> PhantomCase:
    """A phantom radiograph with a pleural effusion: a finding outside the model's classes (OOD).

    A NORMAL case is rendered, then one lung's base is filled with fluid density up to a
    meniscus that rises laterally (the costophrenic angle is blunted), as on an erect film.

    Args:
        size: output side in pixels, in [32, 2048].
        rng: the case's generator.
        fraction: share of the lung's height filled, in [0.05, 0.9]; drawn from U(0.2, 0.45)
            when None.

    Returns:
        A :class:`PhantomCase` of label 1 (the patient without the effusion is NORMAL) whose
        ``mask`` is the effusion.
    """
    if fraction is not None:
        check_range("fraction", fraction, low=0.05, high=0.9)
    case = render_case(1, size=size, rng=rng, severity=0.0)
    side = int(rng.integers(0, 2))  # 0: image left, 1: image right
    frac = float(rng.uniform(0.2, 0.45)) if fraction is None else float(fraction)
    fluid = _fluid(case.lungs, side, frac)
    if not fluid.any():
        return case
    soft = float(np.percentile(case.image, 80)) / 255.0
    weight = _blur(fluid.astype(np.float32), 1.5 * size / 256.0)
    img = case.image / 255.0 * (1 - 0.85 * weight) + 0.85 * weight * soft
    image = np.round(np.clip(img, 0, 1) * 255.0).astype(np.uint8)
    return PhantomCase(image=image, mask=fluid, lungs=case.lungs, severity=frac, label=1)
