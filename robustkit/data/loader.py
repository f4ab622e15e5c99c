"""The loader: find, check and index a labelled image dataset into a :class:`Dataset`.

Two layouts are read by :func:`load_dataset` (finding their files is
:mod:`robustkit.data.layouts`' job, the layout scan beside this module):

* a folder per class (the COVID-19 Radiography Database layout)::

      root/COVID-19/COVID-19_0001.png       root/masks/COVID-19/COVID-19_0001.png
      root/NORMAL/...                       (or root/<class>/masks/<stem>.png, or
      root/Viral Pneumonia/...               root/<class>/images/ + root/<class>/masks/)

* a CSV manifest with the columns ``path,label`` and an optional ``mask`` column, the paths
  relative to the folder of the CSV file (multi-label: ``label`` lists the findings).

Here the class order is resolved, the class map and exclusions applied, bad files filtered
(or refused) and the samples built; images stay on disk until :class:`Dataset` loads them.

Example:
    >>> data = load_dataset("data/phantom")              # doctest: +SKIP
    >>> len(data), data.class_names                      # doctest: +SKIP
    (300, ['COVID-19', 'NORMAL', 'Viral Pneumonia'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from robustkit.data.classes import apply_class_map
from robustkit.data.dataset import (
    Dataset,
    Sample,
    _resolve_classes,
    _Store,
    _with_findings,
)
from robustkit.data.imageio import _bad
from robustkit.data.layouts import MASK_KINDS, _check_nonempty, _filter_bad, scan_layout
from robustkit.errors import check_choice, check_range

__all__ = ["load_dataset"]


def load_dataset(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    on_bad_input: str = "fail",
    max_pixels: int = 100_000_000,
    validate: bool = True,
    class_map: dict[str, str] | None = None,
    exclude_classes: Sequence[str] = (),
    merge_classes: bool = False,
    masks: str | None = None,
    multilabel: bool | None = None,
    strict_metadata: bool = False,
) -> Dataset:
    """Find, check and index a labelled image dataset (images are decoded lazily).

    Args:
        path: A folder with one subfolder per class (plus optional ``masks`` and
            ``lung_masks``), or a CSV manifest with the columns ``path,label[,mask,mask_kind]``
            and any metadata columns.
        class_names: The classes the data must have (after ``class_map``), in this order
            (e.g. the model's). Default: sorted folder names or sorted unique labels.
        on_bad_input: ``"fail"`` raises on the first unreadable file; ``"skip"`` drops it
            and records it in ``Dataset.skipped``.
        max_pixels: Largest width * height accepted for one image.
        validate: Open every image's header (and check PNG CRCs, mask sizes) up front.
        class_map: ``{data class: model class}`` renames, applied before the class check.
        exclude_classes: Data classes set aside as ``Dataset.out_of_scope``.
        merge_classes: Allow ``class_map`` to send two data classes to one class.
        masks: What the ``masks`` files are: ``"lesion"`` (default), ``"lung"`` or ``"none"``.
        multilabel: Read the manifest's labels as sets of findings (``Effusion|Opacity``, "No
            Finding" the empty set). Default: a manifest with a ``|`` or "No Finding" label or
            a ``mask.<finding>`` column is multi-label. For multi-label data the class map and
            exclusions apply to findings: an excluded finding is removed from every label set
            (counted in ``notes``), not set aside as out-of-scope images.
        strict_metadata: Refuse an image without a row (or with an empty cell) in its class's
            ``<class>.metadata.csv|xlsx`` sheet; by default it gets the value ``missing`` in
            that column (counted in ``describe()["metadata_missing"]``).

    Returns:
        The dataset, samples ordered by (class, id) for a folder, by row for a manifest.

    Raises:
        DataError: missing root, no class folders, an empty class, duplicate ids, a
            class-name mismatch (suggesting a class map), a bad metadata column, masks of
            another aspect ratio, or (with ``"fail"``) an unreadable image or mask.
        ConfigError: a class map or exclusion naming a class the data does not have.
    """
    check_choice("on_bad_input", on_bad_input, ("fail", "skip"), where="load_dataset")
    check_range("max_pixels", max_pixels, low=1, integer=True, where="load_dataset")
    if masks is not None:
        check_choice("masks", masks, MASK_KINDS, where="load_dataset")
    root = Path(path)
    fmt, found, entries, notes = scan_layout(root, masks=masks, multilabel=multilabel,
                                             strict_metadata=strict_metadata)
    plan = apply_class_map(found, class_map, exclude=list(exclude_classes), merge=merge_classes)
    if entries and entries[0].findings is not None:
        return _load_multilabel(root, entries, notes, plan, class_names, on_bad_input, max_pixels, validate)
    order = _resolve_classes(plan.kept, class_names, root)
    store = _Store()
    entries, skipped = _filter_bad(
        entries,
        max_pixels=max_pixels,
        deep=validate,
        skip=on_bad_input == "skip",
        sizes=store.sizes,
    )
    inside = [e for e in entries if e.label in plan.rename]
    outside = [e for e in entries if e.label not in plan.rename]
    _check_nonempty(root, order, [replace(e, label=plan.rename[e.label]) for e in inside])
    base = root if fmt == "folder" else root.parent
    oos = (
        Dataset(base, plan.excluded, _samples(outside, plan.excluded, None, fmt), format=fmt,
                skipped=skipped, max_pixels=max_pixels, notes=notes, _store=store)
        if plan.excluded else None
    )
    renames = {k: v for k, v in plan.rename.items() if k != v}
    return Dataset(
        base, order, _samples(inside, order, plan.rename, fmt), format=fmt, skipped=skipped,
        max_pixels=max_pixels, notes=notes, out_of_scope=oos, class_map=renames, _store=store,
    )


def _load_multilabel(root: Path, entries: list[Any], notes: list[str], plan: Any, class_names: list[str] | None,
                     on_bad_input: str, max_pixels: int, validate: bool) -> Dataset:
    """A multi-label manifest: the class map renames findings, an exclusion drops a finding."""
    order = _resolve_classes(plan.kept, class_names, root, absent_ok=True)
    store = _Store()
    entries, skipped = _filter_bad(entries, max_pixels=max_pixels, deep=validate,
                                   skip=on_bad_input == "skip", sizes=store.sizes)
    if not entries:
        raise _bad(root, "expected at least one usable image, got none.")
    index = {name: i for i, name in enumerate(order)}
    notes = list(notes)
    for name in plan.excluded:
        n = sum(name in (e.findings or ()) for e in entries)
        notes.append(f"finding {name!r} excluded: removed from the labels of {n} image(s)")
    absent = [c for c in order if not any(plan.rename.get(f) == c for e in entries for f in e.findings or ())]
    if absent:
        notes.append(f"no image has the finding(s) {', '.join(absent)}: their AUROC is undefined")
    samples = []
    for e in entries:
        findings = [index[plan.rename[f]] for f in e.findings or () if f in plan.rename]
        masks: dict[str, Path] = {}
        for name, path in e.finding_masks:
            if name in plan.rename:
                masks.setdefault(plan.rename[name], path)  # merged findings: the first mask
        sample = Sample(e.id, e.path, 0, e.mask_path, e.lung_mask_path, e.metadata,
                        finding_masks=tuple(sorted(masks.items())))
        samples.append(_with_findings(sample, findings, len(order)))
    renames = {k: v for k, v in plan.rename.items() if k != v}
    return Dataset(root.parent, order, samples, format="manifest", skipped=skipped, max_pixels=max_pixels,
                   notes=notes, class_map=renames, multilabel=True, _store=store)


def _samples(
    entries: Sequence[Any], order: Sequence[str], rename: dict[str, str] | None, fmt: str
) -> list[Sample]:
    index = {name: i for i, name in enumerate(order)}
    samples = [
        Sample(e.id, e.path, index[rename[e.label] if rename else e.label], e.mask_path,
               e.lung_mask_path, e.metadata)
        for e in entries
    ]
    if fmt == "folder":
        samples.sort(key=lambda s: (s.label, s.id))
    return samples
