"""Datasets of labelled images: sampling, splitting, caching and fingerprints.

A :class:`Dataset` is built by the loader (:func:`robustkit.data.loader.load_dataset`, which
reads the layouts of :mod:`robustkit.data.layouts`); this module holds what a dataset is and
does once loaded.

Images are returned in pixel space: float32 ``(N, H, W, C)`` in [0, 1]. PNG, JPEG, BMP and
TIFF (8- and 16-bit, grayscale, RGB, RGBA, palette, CMYK) are read with pillow; DICOM with
pydicom (rescale slope/intercept, VOI window, MONOCHROME1 inverted to MONOCHROME2). Every
failure raises :class:`~robustkit.errors.DataError` naming the file and the problem.

Decoding one file lives in :mod:`robustkit.data.imageio` (``read_image`` and ``IMAGE_SUFFIXES``
are re-exported here).

Example:
    >>> from robustkit.data import load_dataset
    >>> data = load_dataset("data/phantom")                       # doctest: +SKIP
    >>> x = data.load_images(range(8), size=(256, 256), channels=3)  # doctest: +SKIP
    >>> x.shape, x.dtype                                          # doctest: +SKIP
    ((8, 256, 256, 3), dtype('float32'))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.data.classes import suggest_class_map
from robustkit.data.imageio import (
    IMAGE_SUFFIXES,
    _bad,
    _check_mask_shape,
    _fit,
    _mask_to_bool,
    _probe,
    read_image,
)
from robustkit.data.metadata import missing_counts
from robustkit.errors import check_choice, check_range, param_error

__all__ = [
    "CACHE_BYTES",
    "IMAGE_SUFFIXES",
    "Dataset",
    "Sample",
    "read_image",
    "stratified_split",
]


#: Resized images are kept in memory (float32) while their total stays under this many bytes.
CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        id: Stable id: the path relative to the dataset root, POSIX, without suffix.
        path: Where the image is.
        label: Index into the dataset's ``class_names``.
        mask_path: The lesion mask of the image, if there is one.
        lung_mask_path: The lung-field mask of the image, if there is one.
        metadata: ``(column, value)`` pairs (site, view, sex, age, ...); numbers stay numbers.
        findings: Multi-label data: the indices (into ``class_names``) of the findings present,
            sorted, empty for "No Finding"; None for single-label data. ``label`` is then a
            stratification key: the first finding present, or ``len(class_names)`` for none.
        finding_masks: Multi-label data: ``(finding name, mask path)`` per finding with a mask.
    """

    id: str
    path: Path
    label: int
    mask_path: Path | None = None
    lung_mask_path: Path | None = None
    metadata: tuple[tuple[str, Any], ...] = ()
    findings: tuple[int, ...] | None = None
    finding_masks: tuple[tuple[str, Path], ...] = ()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Store:
    """Per-file state shared by a dataset and every dataset derived from it."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = CACHE_BYTES if budget is None else budget  # read at call time: tests lower it
        self.used = 0
        self.images: dict[tuple[Path, tuple[int, int], int], np.ndarray] = {}
        self.hashes: dict[Path, str] = {}
        self.sizes: dict[Path, tuple[int, int]] = {}

    def put(self, key: tuple[Path, tuple[int, int], int], arr: np.ndarray) -> None:
        if self.used + arr.nbytes <= self.budget:
            arr.setflags(write=False)
            self.images[key] = arr
            self.used += arr.nbytes

    def sha256(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = _sha256(path)
        return self.hashes[path]


# --------------------------------------------------------------------------- dataset


def _check_size(size: Any) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise param_error("size", "a (height, width) pair of positive ints", size)
    return int(size[0]), int(size[1])


def _check_channels(channels: Any) -> int:
    if channels not in (1, 3) or isinstance(channels, bool):
        raise param_error("channels", "1 or 3", channels)
    return int(channels)


class Dataset:
    """Labelled images with stable ids, loaded by :func:`load_dataset`.

    Attributes:
        root: The dataset folder (the CSV's folder for a manifest), as given.
        class_names: Class names; ``Sample.label`` indexes this list.
        samples: The samples, in a deterministic order (class, id for folders; row order
            for manifests).
        skipped: ``(relative path, reason)`` of the files dropped with ``on_bad_input="skip"``.
        format: ``"folder"`` or ``"manifest"``.
        out_of_scope: The samples of the excluded classes (``exclude_classes``), labelled in
            their own classes, kept for studies of inputs outside the model's classes; None
            when no class was excluded.
        class_map: The data-to-model class renames applied (``{data name: model name}``).
        notes: What was seen but not used or filled in (images without a row in their metadata sheet ...).
        multilabel: The samples carry sets of findings (``Sample.findings``, :attr:`targets`)
            and ``class_names`` are the findings.
    """

    def __init__(
        self,
        root: Path,
        class_names: Sequence[str],
        samples: Sequence[Sample],
        *,
        format: str = "folder",
        skipped: Sequence[tuple[str, str]] = (),
        max_pixels: int = 100_000_000,
        cache_bytes: int | None = None,
        out_of_scope: Dataset | None = None,
        class_map: dict[str, str] | None = None,
        notes: Sequence[str] = (),
        multilabel: bool = False,
        _store: _Store | None = None,
    ) -> None:
        self.root = Path(root)
        self.class_names = list(class_names)
        self.samples = list(samples)
        self.format = format
        self.skipped = list(skipped)
        self.max_pixels = max_pixels
        self.out_of_scope = out_of_scope
        self.class_map = dict(class_map or {})
        self.notes = list(notes)
        self.multilabel = bool(multilabel)
        self._store = _store or _Store(CACHE_BYTES if cache_bytes is None else cache_bytes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"Dataset(root={str(self.root)!r}, n_samples={len(self)}, class_names={self.class_names!r})"

    @property
    def ids(self) -> np.ndarray:
        """str (N,): the sample ids."""
        return np.array([s.id for s in self.samples], dtype=str)

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,): the sample labels."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def targets(self) -> np.ndarray:
        """bool (N, K): which classes (findings) each sample has; one-hot for single-label data."""
        out = np.zeros((len(self.samples), len(self.class_names)), dtype=bool)
        for row, s in enumerate(self.samples):
            out[row, list(s.findings) if s.findings is not None else [s.label]] = True
        return out

    @property
    def has_masks(self) -> bool:
        """Whether any sample has a lesion mask (for multi-label data: a mask of any finding)."""
        return any(s.mask_path is not None or s.finding_masks for s in self.samples)

    @property
    def finding_mask_names(self) -> list[str]:
        """Multi-label data: the findings that have a mask on at least one sample (class order)."""
        have = {name for s in self.samples for name, _ in s.finding_masks}
        return [c for c in self.class_names if c in have]

    @property
    def has_lung_masks(self) -> bool:
        """Whether any sample has a lung-field mask."""
        return any(s.lung_mask_path is not None for s in self.samples)

    @property
    def metadata_columns(self) -> list[str]:
        """The per-sample metadata columns (every sample has every column)."""
        return [k for k, _ in self.samples[0].metadata] if self.samples else []

    @property
    def metadata(self) -> dict[str, np.ndarray]:
        """Per-sample metadata ``{column: (N,) array}`` (int64, float64 or str)."""
        out: dict[str, np.ndarray] = {}
        for j, col in enumerate(self.metadata_columns):
            out[col] = np.asarray([s.metadata[j][1] for s in self.samples])
        return out

    @property
    def n_excluded(self) -> int:
        """Samples of the excluded classes (kept in ``out_of_scope``)."""
        return 0 if self.out_of_scope is None else len(self.out_of_scope)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the content: ids, labels, image and mask bytes, class names, and the
        relative paths of the files skipped as unreadable (so a skip shows in the fingerprint)."""
        store = self._store
        rows = sorted(
            (
                s.id,
                s.label,
                store.sha256(s.path),
                store.sha256(s.mask_path) if s.mask_path else "",
                store.sha256(s.lung_mask_path) if s.lung_mask_path else "",
                [[k, v] for k, v in s.metadata],
            )
            for s in self.samples
        )
        content: dict[str, Any] = {"class_names": self.class_names, "samples": rows}
        if self.multilabel:  # single-label fingerprints stay what they were
            content["findings"] = sorted(
                (s.id, list(s.findings or ()), [[n, store.sha256(p)] for n, p in s.finding_masks])
                for s in self.samples
            )
        if self.out_of_scope is not None:
            content["out_of_scope"] = self.out_of_scope.fingerprint
        if self.skipped:
            content["skipped"] = sorted(path for path, _ in self.skipped)
        payload = json.dumps(content, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _derive(
        self, samples: Sequence[Sample], class_names: Sequence[str] | None = None
    ) -> Dataset:
        return Dataset(
            self.root,
            self.class_names if class_names is None else class_names,
            samples,
            format=self.format,
            skipped=self.skipped,
            max_pixels=self.max_pixels,
            out_of_scope=self.out_of_scope,
            class_map=self.class_map,
            notes=self.notes,
            multilabel=self.multilabel,
            _store=self._store,
        )

    def _indices(self, indices: Any) -> np.ndarray:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range for a dataset of {len(self)} samples")
        return idx % max(len(self), 1)

    def subset(self, indices: Iterable[int] | np.ndarray) -> Dataset:
        """The samples at ``indices``, in that order (sharing this dataset's cache)."""
        return self._derive([self.samples[i] for i in self._indices(indices)])

    def _by_class(self) -> list[np.ndarray]:
        labels = self.labels
        keys = range(len(self.class_names) + int(self.multilabel))  # + "No Finding"
        return [np.flatnonzero(labels == k) for k in keys]

    def subsample_positions(self, n: int, *, seed: int) -> np.ndarray:
        """Positions ``(m,)`` of a seeded, stratified subsample of ``n`` samples (proportional
        per class, at least one per class present), sorted; every position if ``n`` >= len."""
        check_range("n", n, low=1, integer=True, where="Dataset.subsample")
        if n >= len(self):
            return np.arange(len(self), dtype=np.int64)
        groups = self._by_class()
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        present = int((counts > 0).sum())
        if n < present:
            raise param_error(
                "n",
                f"an int >= {present} (one sample per class present) or None",
                n,
                where="Dataset.subsample",
            )
        alloc = _allocate(counts, n)
        rng = np.random.default_rng(seed)
        picked = [
            rng.choice(g, size=int(a), replace=False)
            for g, a in zip(groups, alloc, strict=True)
            if a
        ]
        return np.sort(np.concatenate(picked)).astype(np.int64)

    def subsample(self, n: int | None, *, seed: int) -> Dataset:
        """A seeded, stratified subsample of ``n`` samples (proportional per class, at least
        one per class present), in original order; ``self`` if ``n`` is None or >= len."""
        if n is None:
            return self
        check_range("n", n, low=1, integer=True, where="Dataset.subsample")
        if n >= len(self):
            return self
        return self.subset(self.subsample_positions(n, seed=seed))

    def split(self, fraction: float, *, seed: int) -> tuple[Dataset, Dataset]:
        """Seeded stratified split; the first part gets about ``fraction`` of every class
        (at least one sample on each side for a class with two or more)."""
        check_range("fraction", fraction, low=0.0, high=1.0, low_open=True, where="Dataset.split")
        first, second = stratified_split(self.labels, fraction, rng=np.random.default_rng(seed))
        return self.subset(first), self.subset(second)

    def _image(self, sample: Sample, size: tuple[int, int], channels: int) -> np.ndarray:
        key = (sample.path, size, channels)
        cached = self._store.images.get(key)
        if cached is not None:
            return cached
        img = read_image(sample.path, max_pixels=self.max_pixels)
        self._store.sizes[sample.path] = img.shape[:2]
        out = _fit(img, size, channels)
        self._store.put(key, out)
        return out

    def load_images(
        self, indices: Iterable[int] | np.ndarray, *, size: tuple[int, int], channels: int
    ) -> np.ndarray:
        """Decode and resize images.

        Args:
            indices: Sample positions.
            size: Target (H, W).
            channels: 1 (RGB becomes BT.601 luma) or 3 (grayscale is repeated).

        Returns:
            float32 (n, H, W, channels) in [0, 1].
        """
        size, channels = _check_size(size), _check_channels(channels)
        idx = self._indices(indices)
        out = np.empty((len(idx), size[0], size[1], channels), dtype=np.float32)
        for row, i in enumerate(idx):
            out[row] = self._image(self.samples[i], size, channels)
        return out

    def _image_shape(self, path: Path) -> tuple[int, int]:
        if path not in self._store.sizes:
            self._store.sizes[path] = _probe(path, self.max_pixels)
        return self._store.sizes[path]

    def _mask(self, sample: Sample, size: tuple[int, int], kind: str, finding: str | None = None) -> np.ndarray:
        path = sample.lung_mask_path if kind == "lung" else sample.mask_path
        if finding is not None:
            path = dict(sample.finding_masks).get(finding)
        if path is None:
            return np.zeros(size, dtype=bool)
        key = (path, size, 0)
        cached = self._store.images.get(key)
        if cached is not None:
            return cached
        mask = read_image(path, max_pixels=self.max_pixels)
        image_hw = self._image_shape(sample.path)
        self._store.sizes[path] = mask.shape[:2]
        resize = _check_mask_shape(sample.path, image_hw, path, mask.shape[:2])
        out = _mask_to_bool(mask, size, image_hw if resize else None)
        self._store.put(key, out)
        return out

    def load_masks(
        self,
        indices: Iterable[int] | np.ndarray,
        *,
        size: tuple[int, int],
        kind: str = "lesion",
        finding: str | None = None,
    ) -> np.ndarray:
        """Masks resized to ``size``: bool (n, H, W), all False where a sample has none.

        Args:
            indices: Sample positions.
            size: Target (H, W).
            kind: ``"lesion"`` or ``"lung"`` (lung fields). A mask of another size than its
                image but the same aspect ratio is resized to the image by nearest neighbour
                first (see :meth:`mask_resizes`).
            finding: Multi-label data: the masks of this finding (all False where a sample has
                none); ``kind`` must then be ``"lesion"``.
        """
        size = _check_size(size)
        check_choice("kind", kind, ("lesion", "lung"), where="Dataset.load_masks")
        if finding is not None:
            check_choice("finding", finding, self.class_names, where="Dataset.load_masks")
            check_choice("kind", kind, ("lesion",), where="Dataset.load_masks")
        idx = self._indices(indices)
        out = np.zeros((len(idx), size[0], size[1]), dtype=bool)
        for row, i in enumerate(idx):
            out[row] = self._mask(self.samples[i], size, kind, finding)
        return out

    def mask_resizes(self) -> dict[str, int]:
        """How many masks are resized to their image, keyed ``"<mask WxH> -> <image WxH>"``
        (the report says so once)."""
        counts: dict[str, int] = {}
        for s in self.samples:
            for path in (s.mask_path, s.lung_mask_path, *(p for _, p in s.finding_masks)):
                if path is None:
                    continue
                mh, mw = self._image_shape(path)
                ih, iw = self._image_shape(s.path)
                if (mh, mw) != (ih, iw):
                    key = f"{mw}x{mh} -> {iw}x{ih}"
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def batches(
        self,
        batch_size: int,
        *,
        size: tuple[int, int],
        channels: int,
        indices: Iterable[int] | np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices int64 (b,), images float32 (b, H, W, C))`` in order."""
        check_range("batch_size", batch_size, low=1, integer=True, where="Dataset.batches")
        idx = np.arange(len(self), dtype=np.int64) if indices is None else self._indices(indices)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            yield chunk, self.load_images(chunk, size=size, channels=channels)

    def class_counts(self) -> dict[str, int]:
        """Samples per class, every class listed (in class order); for multi-label data, the
        samples with each finding (an image counts once per finding it has)."""
        if self.multilabel:
            counts = self.targets.sum(axis=0)
        else:
            counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for results.json and the report)."""
        return {
            "root": str(self.root),
            "format": self.format,
            "n_samples": len(self),
            "class_names": list(self.class_names),
            "class_counts": self.class_counts(),
            "has_masks": self.has_masks,
            "has_lung_masks": self.has_lung_masks,
            "fingerprint": self.fingerprint,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "class_map": dict(self.class_map),
            "n_excluded": self.n_excluded,
            "excluded_counts": (
                self.out_of_scope.class_counts() if self.out_of_scope is not None else {}
            ),
            "metadata_columns": self.metadata_columns,
            "metadata_missing": missing_counts(self.metadata),
            "mask_resized": self.mask_resizes(),
            "notes": list(self.notes),
            "phantom": (Path(self.root) / "phantom.json").is_file(),  # robustkit's synthetic phantom
            **(self._describe_findings() if self.multilabel else {}),
        }

    def _describe_findings(self) -> dict[str, Any]:
        targets = self.targets
        per_image = targets.sum(axis=1)
        return {
            "multilabel": True,
            "n_no_finding": int((per_image == 0).sum()),
            "findings_per_image": {str(k): int((per_image == k).sum()) for k in np.unique(per_image)},
            "finding_masks": {c: sum(c in dict(s.finding_masks) for s in self.samples)
                              for c in self.finding_mask_names},
        }

    def with_class_order(self, class_names: Sequence[str]) -> Dataset:
        """The same samples (same order) relabelled to ``class_names`` (e.g. a model's order).

        Raises:
            DataError: naming the classes missing on either side.
        """
        order = _resolve_classes(self.class_names, class_names, self.root, absent_ok=self.multilabel)
        new_index = {name: i for i, name in enumerate(order)}
        if self.multilabel:
            samples = [_with_findings(s, sorted(new_index[self.class_names[f]] for f in s.findings or ()),
                                      len(order)) for s in self.samples]
        else:
            samples = [replace(s, label=new_index[self.class_names[s.label]]) for s in self.samples]
        return self._derive(samples, order)


def _with_findings(sample: Sample, findings: Sequence[int], k: int) -> Sample:
    """``sample`` with these finding indices (and the stratification key that goes with them)."""
    found = tuple(sorted(set(findings)))
    return replace(sample, findings=found, label=found[0] if found else k)


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample counts summing to ``n``: proportional (largest remainder), at least
    one per present class, never more than a class has."""
    quota = n * counts / counts.sum()
    alloc = np.minimum(
        np.maximum(np.floor(quota).astype(np.int64), (counts > 0).astype(np.int64)), counts
    )
    while alloc.sum() < n:
        alloc[int(np.argmax(np.where(alloc < counts, quota - alloc, -np.inf)))] += 1
    while alloc.sum() > n:
        alloc[int(np.argmax(np.where(alloc > 1, alloc - quota, -np.inf)))] -= 1
    return alloc


def stratified_split(labels: np.ndarray, fraction: float, *, rng: np.random.Generator | None = None,
                     keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of positions: the one home of the split (datasets, studies).

    Each class present (in increasing label order) is permuted with ``rng`` (or ordered by
    per-sample ``keys``) and cut at ``round(fraction * size)`` (half up), clamped so that a
    class of two or more samples has at least one sample on each side.

    Args:
        labels: ``(N,)`` class indices.
        fraction: share of each class in the first part, in (0, 1].
        rng: the generator to draw the permutations from.
        keys: ``(N,)`` a per-sample draw (for example keyed by sample id): the split then
            does not depend on the order of the samples. Exactly one of ``rng``/``keys``.

    Returns:
        ``(first, second)``: sorted int64 positions, disjoint, together ``0..N-1``.
    """
    y = np.asarray(labels).reshape(-1)
    first: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    second: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    if (rng is None) == (keys is None):
        raise ValueError("stratified_split takes exactly one of rng and keys")
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        if keys is not None:
            group = members[np.argsort(np.asarray(keys)[members], kind="stable")]
        else:
            assert rng is not None
            group = rng.permutation(members)
        n = int(np.floor(fraction * len(group) + 0.5))
        if len(group) >= 2:
            n = min(max(n, 1), len(group) - 1)
        first.append(group[:n])
        second.append(group[n:])
    return np.sort(np.concatenate(first)).astype(np.int64), np.sort(np.concatenate(second)).astype(np.int64)


def _resolve_classes(found: Sequence[str], given: Sequence[str] | None, where: Path,
                     absent_ok: bool = False) -> list[str]:
    """The class order to use: ``given`` if it names exactly the ``found`` classes (with
    ``absent_ok``, multi-label data, a given finding no image has is allowed: all negatives)."""
    if given is None:
        return list(found)
    given = list(given)
    if len(set(given)) != len(given) or not all(isinstance(c, str) and c for c in given):
        raise param_error("class_names", "a list of unique, non-empty class names", given)
    missing = [] if absent_ok else [c for c in given if c not in found]
    extra = [c for c in found if c not in given]
    if missing or extra:
        parts = ([f"missing from the data: {missing}"] if missing else []) + (
            [f"not in class_names: {extra}"] if extra else []
        )
        hint = suggest_class_map(extra, missing)
        raise _bad(
            where,
            f"expected the classes {given}, got {list(found)} ({'; '.join(parts)})"
            + (f"; did you mean {hint}?" if hint else "."),
        )
    return given
