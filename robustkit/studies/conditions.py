"""The loop over conditions (transform x severity) that the perturbation and noise studies share.

A :class:`ConditionStudy` declares its transform ``family``, its config defaults and profiles;
this base does the rest once: it plans the conditions, streams the study's images in batches,
transforms each batch in a background thread while the model runs on the previous one (numpy,
PIL and TensorFlow release the GIL, so the study costs little more than its forward passes),
and turns the predictions into metrics, intervals, checks and per-sample records.

Costs and seeds. Each distinct condition costs one forward pass per sample; conditions that
are the same operation (a flip or an inversion at every severity) are computed once. The clean
predictions come from :meth:`AuditContext.clean_logits` (no extra clean pass). A random
transform draws each image's noise from ``ctx.rng(study, transform, severity, sample id)``,
so results are the same for the same seed whatever the batch size, the order of the samples
or the shards they are split into.

One map and one reduce for every task kind: the map records the probabilities under every
condition, and the pure reduce (:mod:`robustkit.studies.condition_reduce`, where the metrics
are documented) computes the per-output block (AUROC, its drop, flip rates of each output's
call) for every task and, inside the same reduce, the block that exists only for exclusive
tasks (accuracy, per-class sensitivity, the arg-max flip rate, corruption errors).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from robustkit.data.images import png_base64
from robustkit.data.transforms import SEVERITIES, Transform, family_transforms, get_transform
from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies.base import AuditContext, Study, StudyConfig
from robustkit.studies.condition_plan import Plan, condition_name, plan_conditions
from robustkit.studies.condition_reduce import (
    corruption_errors,
    probe_check,
    reduce_conditions,
    rise_check,
)

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["ConditionConfig", "ConditionStudy", "condition_name", "corruption_errors"]

EXAMPLE_SIDE = 96  # px of the example thumbnails kept in results.json
_PREFETCH = 2  # transformed batches prepared ahead of the model


@dataclass(frozen=True)
class ConditionConfig(StudyConfig):
    """Options of a condition study (the family's transforms at chosen severities).

    Attributes:
        transforms: names of the transforms to run (see :mod:`robustkit.data.transforms`).
        severities: severities to run, each in 1..5.
        n_bootstrap: bootstrap resamples for the accuracy intervals (0: no intervals).
        rise_warn: warn when accuracy at the highest severity run exceeds that at the lowest,
            or the clean accuracy, by more than this (a broken transform or a shortcut).
    """

    family: ClassVar[str] = ""

    transforms: tuple[str, ...] = ()
    severities: tuple[int, ...] = SEVERITIES
    n_bootstrap: int = 1000
    rise_warn: float = 0.1

    def validate(self) -> None:
        super().validate()
        where = f"study {self.family!r}"
        if not self.transforms:
            raise param_error("transforms", "a non-empty list of transform names", list(self.transforms), where=where)
        for name in self.transforms:
            check_choice("transforms", name, family_transforms(self.family), where=where)
        if not self.severities:
            raise param_error("severities", "a non-empty list of ints in [1, 5]", list(self.severities), where=where)
        for s in self.severities:
            check_range("severities", s, low=1, high=5, integer=True, where=where)
        for key in ("transforms", "severities"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise param_error(key, "a list without repeats", list(values), where=where)
        if self.n_bootstrap != 0:
            check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=where)
        check_range("rise_warn", self.rise_warn, low=0.0, high=1.0, where=where)


class ConditionStudy(Study):
    """Base of studies that measure the model under transformed copies of its images.

    Subclasses set ``name``, ``description``, ``Config`` (a :class:`ConditionConfig` whose
    ``family`` and default ``transforms`` name their transforms) and ``profiles``.
    """

    Config: ClassVar[type[StudyConfig]] = ConditionConfig
    config: ConditionConfig
    metric_docs = {
        "accuracy": ("share of images classified correctly under a transform at a severity "
                     "(accuracy.t.s), or its mean over severities (accuracy.t)", "higher"),
        "flip_rate": ("share of images whose predicted class differs from their clean prediction (flip_rate.t.s, "
                      "exclusive tasks); multi-label: share of image-finding calls (at the finding's threshold) that "
                      "differ from the clean call, per finding F (flip_rate.F.t.s) and over every finding "
                      "(flip_rate.t.s)", "lower"),
        "mean_confidence": ("mean top-class probability under the condition", "none"),
        "sensitivity": ("per class and condition: share of the class's images predicted as it "
                        "(sensitivity.<class>.t.s)", "higher"),
        "mean_accuracy": ("accuracy averaged over every condition run", "higher"),
        "mean_flip_rate": ("flip rate averaged over every condition run", "lower"),
        "relative_robustness": ("mean accuracy under the conditions divided by clean accuracy", "higher"),
        "worst_accuracy": ("lowest accuracy over the conditions (which one: in the report)", "higher"),
        "corruption_error": ("per transform: summed error over severities divided by the reference "
                             "model's (`--ce-reference AUDIT_DIR`; Hendrycks & Dietterich CE; below 1 beats the "
                             "reference)", "lower"),
        "mean_corruption_error": ("mean of the per-transform corruption errors (mCE)", "lower"),
        "n_samples": ("number of images evaluated under each condition", "none"),
        "auroc": ("ROC AUC of an output F (a class or a finding) under a condition (auroc.F.t.s) and its macro "
                  "mean over outputs (auroc.macro.t.s), every task; multi-label: also their means over severities "
                  "(auroc.F.t, auroc.macro.t)", "higher"),
        "auroc_drop": ("multi-label: clean AUROC minus AUROC under the condition on the same images, per finding "
                       "and macro (auroc_drop.F.t.s, auroc_drop.macro.t.s)", "lower"),
        "mean_auroc": ("macro AUROC averaged over every condition run (mean_auroc, every task), or a finding's "
                       "AUROC so averaged (mean_auroc.F, multi-label)", "higher"),
        "mean_auroc_drop": ("clean macro AUROC minus mean_auroc", "lower"),
        "worst_auroc": ("lowest macro AUROC over the conditions (worst_auroc, every task), or a finding's lowest "
                        "AUROC (worst_auroc.F, multi-label)", "higher"),
        "n_thresholded": ("multi-label: images the flip rates are read on (the half not used to choose the "
                          "thresholds, or every image when they were given)", "none"),
    }
    headline = ("mean_accuracy", "relative_robustness", "worst_accuracy")
    #: transforms whose flip rate alone is checked against ``flip_warn`` (shortcut probes)
    probes: ClassVar[tuple[str, ...]] = ()
    multilabel = True

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """The probabilities ``(B, n_conditions, K)`` under every condition and the clean ones
        ``(B, K)`` (float32), for every task kind."""
        plan = plan_conditions(self.config.transforms, self.config.severities)
        clean = probabilities(ctx.clean_logits(model, batch), model.output_kind).astype(np.float32)
        return {"probs": self._sweep_probs(model, batch, ctx, plan), "clean_probs": clean}

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        """The per-output block for every task and the exclusive block for an exclusive one
        (:func:`robustkit.studies.condition_reduce.reduce_conditions`)."""
        return reduce_conditions(self, records, data, ctx, plan_conditions(self.config.transforms,
                                                                           self.config.severities))

    # -- the sweep -------------------------------------------------------------------------
    def _sweep_probs(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext, plan: Plan) -> np.ndarray:
        """The model's probabilities ``(B, n_conditions, K)`` (float32) under every condition."""
        probs = np.zeros((len(batch), len(plan.conditions), len(model.class_names)), dtype=np.float32)

        def fill(cols: list[int], p: np.ndarray) -> None:
            probs[:, cols, :] = p.astype(np.float32)[:, None, :]

        self._run_jobs(model, batch, ctx, plan, fill)
        return probs

    def _run_jobs(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext, plan: Plan,
                  fill: Callable[[list[int], np.ndarray], None]) -> None:
        """Hand ``fill`` each distinct job's condition columns and probabilities ``(B, K)``."""
        for job, x in _prefetch(self._jobs(model, batch, ctx, plan), _PREFETCH):
            fill(plan.columns[job], probabilities(model.logits(x), model.output_kind))

    def _jobs(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext, plan: Plan
              ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(job, transformed images)`` for every distinct job on the batch's images."""
        h, w, c = model.input_shape
        x = _one_channel(batch.load_images(np.arange(len(batch)), size=(h, w), channels=c))
        for j, (t, s) in enumerate(plan.jobs):
            y = self._transform(t, s, x, batch.ids, ctx)
            yield j, (np.repeat(y, c, axis=-1) if y.shape[-1] != c else y)

    def _transform(self, t: Transform, s: int, x: np.ndarray, ids: np.ndarray, ctx: AuditContext) -> np.ndarray:
        """Apply ``t`` at ``s`` to ``x``: one call, or, for a random transform, one call per
        image with its own generator keyed by (seed, study, transform, severity, sample id)."""
        if not t.random:
            return t(x, s)
        return np.concatenate([
            t(x[i:i + 1], s, rng=ctx.rng(self.name, t.name, s, str(ids[i]))) for i in range(len(x))
        ]) if len(x) else x.copy()

    def _examples(self, data: Dataset, ctx: AuditContext) -> dict[str, str]:
        """Thumbnails of the study's first image, clean and at every severity of every
        transform (with the noise that image gets in the sweep)."""
        if len(data) == 0 or ctx.input_shape is None:
            return {}
        h, w, c = ctx.input_shape
        x = _one_channel(data.load_images(np.arange(1), size=(h, w), channels=c))
        out = {"clean": png_base64(x[0], max_side=EXAMPLE_SIDE)}
        for name in self.config.transforms:
            t = get_transform(name)
            for s in SEVERITIES:
                out[condition_name(name, s)] = png_base64(self._transform(t, s, x, data.ids[:1], ctx)[0],
                                                          max_side=EXAMPLE_SIDE)
        return out

    # -- statistics ------------------------------------------------------------------------
    def _checks(self, metrics: dict[str, float], plan: Plan, clean_acc: float, *, key: str = "accuracy",
                what: str = "accuracy", calls: str = "predictions") -> list[Check]:
        """The rise check on ``key.t.s`` (named ``what``) and the probes' flip-rate checks."""
        checks = [rise_check(metrics, plan, clean_acc, self.config.rise_warn, key=key, what=what)]
        flip_warn = getattr(self.config, "flip_warn", None)
        for probe in self.probes:
            if flip_warn is not None and probe in self.config.transforms:
                checks.append(probe_check(metrics, probe, sorted(self.config.severities), flip_warn, calls=calls))
        return checks


# ---------------------------------------------------------------------------- pure helpers


def _one_channel(x: np.ndarray) -> np.ndarray:
    """A grayscale image repeated in every channel as one channel (every transform treats it
    so, see :mod:`robustkit.data.transforms`); other batches unchanged."""
    if x.shape[-1] > 1 and np.array_equal(x, np.broadcast_to(x[..., :1], x.shape)):
        return np.ascontiguousarray(x[..., :1])
    return x


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` in a background thread, ``depth`` ahead of the consumer; re-raise its errors."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="robustkit-transforms", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
