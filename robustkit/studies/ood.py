"""Study ``ood``: inputs the model should refuse, scored post hoc from one forward pass.

``prepare`` (driver, no model) builds the OOD sets offline (:mod:`robustkit.data.ood_sets`,
the ``--ood NAME=DIR`` folders and the classes excluded with ``--exclude-class``) and picks
the reference data (``--reference-data DIR``, else a seeded stratified split of the audit
data, the weaker setting) into one extra dataset (:meth:`Study.extra_data`), which the
engine maps with the same ``map`` as the audit samples. ``map`` returns each image's logits
and penultimate features from one compiled pass (and the final linear layer's parameters,
the same on every row, so that ``reduce`` can re-apply it for ViM and ReAct without the
model). ``reduce`` fits the reference statistics and scores every image with the scores of
:mod:`robustkit.metrics.ood` (higher = more in-distribution); its metrics are the detection
metrics per score and set, with bootstrap intervals, and the confident critical-class
rate per set (the audit's ``critical_class``), with and without the recommended filter.

Multi-label models (sigmoid outputs, several findings per image; ``multilabel = True``): MSP
is the largest sigmoid, max-logit the largest pre-sigmoid value, energy the JointEnergy of
Wang et al. (2021), ``sum_k log(1 + exp(z_k))`` (also inside ViM and ReAct in place of
``logsumexp``); Mahalanobis fits one Gaussian per finding (its images, an image counted for
every finding it has) and one for "No Finding", with a shared covariance pooled within those
groups; KNN needs no labels. The rate per set becomes ``finding_call_rate``: the share called
with at least one finding at the audit's per-finding thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.dataset import Dataset, Sample, stratified_split
from robustkit.data.imageio import IMAGE_SUFFIXES
from robustkit.data.loader import load_dataset
from robustkit.data.ood_sets import FAR_SETS, OOD_SETS, ArrayDataset, build_sets
from robustkit.errors import DataError, check_choice, check_range, param_error
from robustkit.metrics import ood as O
from robustkit.results import StudyResult
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig

if TYPE_CHECKING:
    from robustkit.model.adapter import ModelAdapter

__all__ = ["SCORES", "OODConfig", "OODStudy", "parse_ood_dir"]

SCORES = ("msp", "max_logit", "energy", "mahalanobis", "knn", "vim", "react")
_WHERE = "study 'ood'"


@dataclass(frozen=True)
class OODConfig(StudyConfig):
    """Options of the OOD study.

    Attributes:
        sets: built-in OOD sets to build (far: ct, mr, us, nm, xray_limb, natural, synthetic;
            near: effusion, inverted, crop).
        n_per_set: images per built-in set.
        reference_data: folder of in-distribution reference images (the training set), one
            subfolder per class; default: a seeded split of the audit data.
        reference_fraction: share of the audit data used as reference without ``reference_data``.
        ood_dirs: the user's sets, ``NAME=DIR`` (images found recursively).
        features_layer: layer whose output is the feature vector; default: the input of the
            final Dense layer (ViM and ReAct need that one).
        knn_k: the neighbour whose distance is the KNN score.
        mahalanobis_shrinkage: ``s`` in the Mahalanobis score's shared covariance
            ``(1 - s) S + s tr(S)/D I`` (:func:`robustkit.metrics.ood.fit_gaussian`); 0 is Lee
            et al.'s pseudo-inverse of ``S``, the default 0.01 keeps the inverse stable with
            fewer reference images than feature dimensions.
        react_percentile: ReAct's clipping percentile of the reference activations.
        threshold: operating threshold on the critical class's probability (the audit's
            ``critical_class``, whose confident calls on OOD images are counted).
        n_bootstrap: bootstrap resamples for the 95% intervals.
        n_gallery: OOD images shown, most confident critical calls first.
    """

    sets: tuple[str, ...] = OOD_SETS
    n_per_set: int = 48
    reference_data: str | None = None
    reference_fraction: float = 0.5
    ood_dirs: tuple[str, ...] = ()
    features_layer: str | None = None
    knn_k: int = 10
    mahalanobis_shrinkage: float = 0.01
    react_percentile: float = 90.0
    threshold: float = 0.5
    n_bootstrap: int = 300
    n_gallery: int = 8

    def validate(self) -> None:
        super().validate()
        for name in self.sets:
            check_choice("sets", name, OOD_SETS, where=_WHERE)
        check_range("n_per_set", self.n_per_set, low=1, integer=True, where=_WHERE)
        check_range("reference_fraction", self.reference_fraction, low=0.0, high=0.95, low_open=True,
                    where=_WHERE)
        check_range("knn_k", self.knn_k, low=1, integer=True, where=_WHERE)
        check_range("mahalanobis_shrinkage", self.mahalanobis_shrinkage, low=0.0, high=1.0, where=_WHERE)
        check_range("react_percentile", self.react_percentile, low=0.0, high=100.0, low_open=True, where=_WHERE)
        check_range("threshold", self.threshold, low=0.0, high=1.0, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        check_range("n_gallery", self.n_gallery, low=0, integer=True, where=_WHERE)
        for item in self.ood_dirs:
            name, sep, folder = item.partition("=")
            if not sep or not name or not folder or name in OOD_SETS or name in ("far", "near", "reference"):
                raise param_error("ood_dirs", "NAME=DIR items with a new set name", item, where=_WHERE)


def parse_ood_dir(item: str) -> tuple[str, Path]:
    """``"NAME=DIR"`` -> ``(NAME, Path(DIR))``."""
    name, _, folder = item.partition("=")
    return name, Path(folder)


def _folder_images(name: str, folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise DataError(f"--ood {name}={folder}: expected a folder with images ({', '.join(IMAGE_SUFFIXES)}), "
                        f"got {'no such folder' if not folder.is_dir() else 'none'}.")
    return files


@register
class OODStudy(Study[OODConfig]):
    name = "ood"
    description = (
        "Whether the model can tell inputs it was never meant for (CT, MR, ultrasound and nuclear-medicine "
        "images, a limb radiograph, photographs, noise, a finding outside its classes, inverted or cropped "
        "chest films) from chest radiographs of its classes, by post hoc scores of one forward pass; and how "
        "often it calls such an image the critical class (the audit's critical_class) with confidence."
    )
    Config = OODConfig
    profiles = {"quick": {"n_per_set": 16, "n_bootstrap": 100}, "standard": {},
                "full": {"n_per_set": 128, "n_bootstrap": 1000}}
    metric_docs = {
        **{k: (f"{v[0]}; per score and set (auroc.<score>.<set>; far/near: the sets pooled)", v[1])
           for k, v in O.DETECTION_METRICS.items()},
        "confident_critical_rate": ("share of a set's images called the critical class (the audit's "
                                    "critical_class) with probability >= the threshold (per set; 'id' for the "
                                    "in-distribution test images); not measured without a critical class", "lower"),
        "confident_critical_rate_filtered": ("the same after the recommended OOD filter rejects images scoring "
                                          "below its 95%-ID-TPR threshold", "lower"),
        "finding_call_rate": ("multi-label: share of a set's images called with at least one finding at the "
                              "per-finding decision thresholds (per set; 'id' for the in-distribution test images)",
                              "lower"),
        "finding_call_rate_filtered": ("multi-label: the same after the recommended OOD filter", "lower"),
        "n_id": ("in-distribution test images scored", "none"),
        "n_reference": ("reference images the statistics are fitted on", "none"),
    }
    headline = ("auroc.energy.far", "auroc.energy.near")
    multilabel = True

    # -- driver side ---------------------------------------------------------------------------
    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Pick the reference data and build the OOD sets into :meth:`extra_data` (no model)."""
        cfg = self.config
        names = list(ctx.model_info.get("class_names") or data.class_names)
        size = (ctx.input_shape or (256, 256, 1))[0]
        self._ref_pos: np.ndarray | None = None
        self.statistics: dict[str, Any] = {}
        groups: list[tuple[str, str, str, list[Any]]] = []  # (name, kind, provenance, items)
        if cfg.reference_data:
            ref = load_dataset(cfg.reference_data, class_names=names)
            self._ref_labels, self._ref_targets = ref.labels.copy(), ref.targets
            groups.append(("reference", "reference", f"folder {cfg.reference_data}", list(ref.samples)))
            self.reference_note = f"{len(ref)} images of --reference-data {cfg.reference_data}"
        else:
            rng = np.random.default_rng(ctx.seed_for("ood", "reference"))
            ref_pos, _ = stratified_split(data.labels, cfg.reference_fraction, rng=rng)
            self._ref_pos = np.sort(ref_pos)
            self._ref_labels, self._ref_targets = data.labels[self._ref_pos], data.targets[self._ref_pos]
            ref = data.subset(self._ref_pos)
            self.reference_note = (f"a seeded {cfg.reference_fraction:.0%} split of the audit data ({len(ref)} images; "
                                   "the rest is the ID test set): weaker than the training set (--reference-data)")
        missing = [names[k] for k in range(len(names)) if not np.any(self._ref_labels == k)]
        if missing and not data.multilabel:  # multi-label: a finding without reference images has no Gaussian
            raise DataError(f"{cfg.reference_data or 'the reference split of the audit data'}: expected reference "
                            f"images of every class ({', '.join(names)}), got none of {', '.join(missing)}.")
        built = build_sets(cfg.sets, n_per_set=cfg.n_per_set, size=size, seed=ctx.seed, reference=ref)
        for set_name, (images, prov) in built.items():
            groups.append((set_name, "far" if set_name in FAR_SETS else "near", prov, images))
        for item in cfg.ood_dirs:
            set_name, folder = parse_ood_dir(item)
            files = _folder_images(set_name, folder)
            groups.append((set_name, "user", f"{len(files)} images of {folder}", files))
        if data.out_of_scope is not None and len(data.out_of_scope):
            oos = data.out_of_scope
            groups.append(("excluded", "near", f"{len(oos)} images of the excluded class(es) "
                           f"{', '.join(oos.class_names)}", list(oos.samples)))
        self._build_extra(groups)

    def _build_extra(self, groups: list[tuple[str, str, str, list[Any]]]) -> None:
        samples: list[Sample] = []
        arrays: dict[str, np.ndarray] = {}
        self.sets_info: list[dict[str, Any]] = []
        for label, (set_name, kind, prov, items) in enumerate(groups):
            for i, item in enumerate(items):
                sid = f"{set_name}/{i:05d}"
                if isinstance(item, np.ndarray):
                    arrays[sid] = item
                    samples.append(Sample(sid, Path(sid), label))
                else:
                    path = item.path if isinstance(item, Sample) else Path(item)
                    samples.append(Sample(sid, path, label))
            self.sets_info.append({"name": set_name, "kind": kind, "n": len(items), "provenance": prov})
        self._extra = ArrayDataset([g[0] for g in groups], samples, arrays)

    def extra_data(self, ctx: AuditContext) -> Dataset | None:
        return self._extra

    # -- model side ----------------------------------------------------------------------------
    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        """Logits ``(B, K)``, features ``(B, D)`` and the final layer's ``[kernel; bias]``
        flattened ``(B, (D + 1) K)`` (the same every row; zeros when features are not its input)."""
        h, w, c = model.input_shape
        x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
        z, f = model.logits_and_features(x, layer=self.config.features_layer)
        tap = model.feature_tap(self.config.features_layer)
        if tap.kernel is not None and tap.bias is not None:
            head = np.r_[tap.kernel, tap.bias[None, :]].astype(np.float32).ravel()
        else:
            head = np.zeros((f.shape[1] + 1) * z.shape[1], dtype=np.float32)
        return {"logits": z, "features": f, "head": np.broadcast_to(head, (len(batch), head.size))}

    # -- reduce --------------------------------------------------------------------------------
    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        from robustkit.studies.ood_reduce import reduce_ood

        return reduce_ood(self, records, data, ctx)

