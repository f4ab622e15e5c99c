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

Metrics (``t`` a transform, ``s`` a severity): ``accuracy.t.s`` (bootstrap 95% interval),
``flip_rate.t.s``, ``mean_confidence.t.s``, ``sensitivity.<class>.t.s``; ``accuracy.t`` (mean over
severities), ``mean_accuracy``, ``mean_flip_rate``, ``relative_robustness``,
``worst_accuracy``; with a reference audit of the same study, ``corruption_error.t`` and
``mean_corruption_error`` (Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR: CE_t = sum_s E_{t,s} / sum_s
E^ref_{t,s}).

A multi-label model (``output_kind == "multilabel"``) is scored per finding instead: its map
records the probabilities ``(N, n_conditions, K)`` and its reduce is
:func:`robustkit.studies.condition_findings.reduce_findings` (``auroc.<finding>.t.s``, the drop
from clean, the flip rate of thresholded findings; documented there).
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
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities
from robustkit.results import Check, StudyResult
from robustkit.studies.base import AuditContext, Study, StudyConfig
from robustkit.studies.condition_findings import reduce_findings
from robustkit.studies.condition_plan import (
    Plan,
    condition_name,
    describe_transform,
    param_text,
    plan_conditions,
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
        "flip_rate": ("share of images whose predicted class differs from their clean prediction; multi-label: "
                      "share of image-finding calls (at the finding's threshold) that differ from the clean call, "
                      "per finding F (flip_rate.F.t.s) and over every finding (flip_rate.t.s)", "lower"),
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
        "auroc": ("multi-label: ROC AUC of a finding F under a condition (auroc.F.t.s), its macro mean over "
                  "findings (auroc.macro.t.s), and their means over severities (auroc.F.t)", "higher"),
        "auroc_drop": ("multi-label: clean AUROC minus AUROC under the condition on the same images, per finding "
                       "and macro (auroc_drop.F.t.s, auroc_drop.macro.t.s)", "lower"),
        "mean_auroc": ("multi-label: macro AUROC averaged over every condition run (mean_auroc), or a finding's "
                       "AUROC so averaged (mean_auroc.F)", "higher"),
        "mean_auroc_drop": ("multi-label: clean macro AUROC minus mean_auroc", "lower"),
        "worst_auroc": ("multi-label: lowest macro AUROC over the conditions (worst_auroc), or a finding's lowest "
                        "AUROC (worst_auroc.F)", "higher"),
        "n_thresholded": ("multi-label: images the flip rates are read on (the half not used to choose the "
                          "thresholds, or every image when they were given)", "none"),
    }
    headline = ("mean_accuracy", "relative_robustness", "worst_accuracy")
    #: transforms whose flip rate alone is checked against ``flip_warn`` (shortcut probes)
    probes: ClassVar[tuple[str, ...]] = ()
    multilabel = True

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> dict[str, np.ndarray]:
        """Predicted class and confidence ``(B, n_conditions)`` under every condition, and the
        clean prediction ``(B,)``; for a multi-label model, the probabilities ``(B, n_conditions,
        K)`` and the clean ones ``(B, K)`` (float32)."""
        plan = plan_conditions(self.config.transforms, self.config.severities)
        if model.output_kind == "multilabel":
            clean = probabilities(ctx.clean_logits(model, batch), model.output_kind).astype(np.float32)
            return {"probs": self._sweep_probs(model, batch, ctx, plan), "clean_probs": clean}
        clean_pred = ctx.clean_logits(model, batch).argmax(axis=1).astype(np.int16)
        pred, conf = self._sweep(model, batch, ctx, plan)
        return {"pred": pred, "confidence": conf, "clean_pred": clean_pred}

    def reduce(self, records: dict[str, np.ndarray], data: Dataset, ctx: AuditContext) -> StudyResult:
        plan = plan_conditions(self.config.transforms, self.config.severities)
        if ctx.model_info.get("output_kind") == "multilabel":
            return reduce_findings(self, records, data, ctx, plan)
        y = np.asarray(data.labels, dtype=np.int64)
        pred, conf = records["pred"], records["confidence"]
        clean_pred = records["clean_pred"].astype(np.int64)
        correct = pred == y[:, None]
        names, class_names = plan.names, list(data.class_names)
        result = StudyResult(name=self.name)
        result.metrics = _condition_metrics(y, pred, conf, clean_pred, names, class_names)
        clean_acc = float(np.mean(clean_pred == y)) if len(y) else float("nan")
        result.metrics.update(_summary_metrics(result.metrics, plan, clean_pred == y))
        result.metrics.update(corruption_errors(result.metrics, ctx.reference, self.name, plan))
        result.intervals = self._intervals(correct, y, names, ctx)
        worst = names[int(np.nanargmin([result.metrics[f"accuracy.{c}"] for c in names]))] if len(y) else None
        result.checks = self._checks(result.metrics, plan, clean_acc)
        result.tables["conditions"] = _condition_table(result.metrics, plan)
        flipped = pred != clean_pred[:, None]
        result.records.update(pred=pred, confidence=conf, correct=correct, flipped=flipped)
        result.data.update(
            conditions=names,
            correct_metrics=[f"accuracy.{c}" for c in names],
            flipped_metrics=[f"flip_rate.{c}" for c in names],  # paired (McNemar) tests in compare
            class_names=class_names,
            clean_accuracy=clean_acc,
            worst_condition=worst,
            severities=sorted(self.config.severities),
            transforms=[describe_transform(get_transform(t)) for t in self.config.transforms],
            examples=self._examples(data, ctx),
            reference=_reference_name(ctx, self.name),
        )
        return result

    # -- the sweep -------------------------------------------------------------------------
    def _sweep(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class and confidence ``(B, n_conditions)`` under every condition: each
        distinct job is transformed in a background thread while the model runs the previous one."""
        n, m = len(batch), len(plan.conditions)
        pred = np.zeros((n, m), dtype=np.int16)
        conf = np.zeros((n, m), dtype=np.float32)

        def fill(cols: list[int], p: np.ndarray) -> None:
            pred[:, cols] = p.argmax(axis=1).astype(np.int16)[:, None]
            conf[:, cols] = p.max(axis=1)[:, None]

        self._run_jobs(model, batch, ctx, plan, fill)
        return pred, conf

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
    def _intervals(self, correct: np.ndarray, y: np.ndarray, names: list[str], ctx: AuditContext) -> dict[str, list[float]]:
        if self.config.n_bootstrap == 0 or len(y) < 2:
            return {}
        lo, hi = M.bootstrap_interval(
            lambda idx: correct[idx].mean(axis=0), len(y), n_boot=self.config.n_bootstrap,
            seed=ctx.seed_for(self.name, "bootstrap"), strata=y,
        )
        return {f"accuracy.{c}": [float(a), float(b)] for c, a, b in zip(names, lo, hi)}

    def _checks(self, metrics: dict[str, float], plan: Plan, clean_acc: float, *, key: str = "accuracy",
                what: str = "accuracy", calls: str = "predictions") -> list[Check]:
        """The rise check on ``key.t.s`` (named ``what``) and the probes' flip-rate checks."""
        checks = [_rise_check(metrics, plan, clean_acc, self.config.rise_warn, key=key, what=what)]
        flip_warn = getattr(self.config, "flip_warn", None)
        for probe in self.probes:
            if flip_warn is not None and probe in self.config.transforms:
                checks.append(_probe_check(metrics, probe, sorted(self.config.severities), flip_warn, calls=calls))
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


def _condition_metrics(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, clean_pred: np.ndarray,
                       names: list[str], class_names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    nan = float("nan")
    empty = len(y) == 0
    acc = (pred == y[:, None]).mean(axis=0) if not empty else np.full(len(names), nan)
    flip = (pred != clean_pred[:, None]).mean(axis=0) if not empty else np.full(len(names), nan)
    mconf = conf.mean(axis=0) if not empty else np.full(len(names), nan)
    for m, c in enumerate(names):
        out[f"accuracy.{c}"] = float(acc[m])
        out[f"flip_rate.{c}"] = float(flip[m])
        out[f"mean_confidence.{c}"] = float(mconf[m])
    for k, cls in enumerate(class_names):
        mask = y == k
        rec = (pred[mask] == k).mean(axis=0) if mask.any() else np.full(len(names), nan)
        for m, c in enumerate(names):
            out[f"sensitivity.{cls}.{c}"] = float(rec[m])
    return out


def _summary_metrics(metrics: dict[str, float], plan: Plan, clean_correct: np.ndarray) -> dict[str, float]:
    names = plan.names
    acc = np.array([metrics[f"accuracy.{c}"] for c in names])
    flips = np.array([metrics[f"flip_rate.{c}"] for c in names])
    clean = float(clean_correct.mean()) if len(clean_correct) else float("nan")
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        out[f"accuracy.{t}"] = float(np.mean([metrics[f"accuracy.{c}"] for c in names if c.rsplit(".", 1)[0] == t]))
    mean_acc = float(acc.mean())
    out["mean_accuracy"] = mean_acc
    out["mean_flip_rate"] = float(flips.mean())
    out["relative_robustness"] = mean_acc / clean if clean > 0 else float("nan")
    out["worst_accuracy"] = float(np.nanmin(acc)) if np.any(np.isfinite(acc)) else float("nan")
    out["n_samples"] = float(len(clean_correct))
    return out


def corruption_errors(metrics: dict[str, float], reference: Any, study: str, plan: Plan) -> dict[str, float]:
    """``corruption_error.t`` and ``mean_corruption_error`` against a reference audit.

    CE_t = sum over severities of (1 - accuracy.t.s) / the same sum for the reference
    (Hendrycks & Dietterich 2019). A transform counts only when the reference has every
    severity run here and a non-zero summed error.
    """
    ref = getattr(reference, "studies", {}).get(study) if reference is not None else None
    if ref is None or ref.status != "ok":
        return {}
    out: dict[str, float] = {}
    for t in dict.fromkeys(t.name for t, _ in plan.conditions):
        sev = [s for tt, s in plan.conditions if tt.name == t]
        keys = [f"accuracy.{condition_name(t, s)}" for s in sev]
        if not all(k in ref.metrics and np.isfinite(ref.metrics[k]) for k in keys):
            continue
        ref_err = sum(1.0 - ref.metrics[k] for k in keys)
        if ref_err > 0:
            out[f"corruption_error.{t}"] = sum(1.0 - metrics[k] for k in keys) / ref_err
    if out:
        out["mean_corruption_error"] = float(np.mean(list(out.values())))
    return out


def _rise_check(metrics: dict[str, float], plan: Plan, clean_acc: float, margin: float, *,
                key: str = "accuracy", what: str = "accuracy") -> Check:
    """Warn where ``what`` (metric ``key.t.s``) rises markedly with severity or beats its clean
    value (for graded transforms)."""
    problems = []
    for t in dict.fromkeys(t for t, _ in plan.conditions):
        sev = sorted(s for tt, s in plan.conditions if tt is t)
        if not t.graded or len(sev) < 2:
            continue
        acc = [metrics[f"{key}.{condition_name(t.name, s)}"] for s in sev]
        if acc[-1] - acc[0] > margin:
            problems.append(f"{t.name} ({acc[0]:.3f} at severity {sev[0]}, {acc[-1]:.3f} at {sev[-1]})")
        elif np.isfinite(clean_acc) and max(acc) - clean_acc > margin:
            problems.append(f"{t.name} ({max(acc):.3f}, above clean {clean_acc:.3f})")
    if problems:
        return Check(f"{what} falls with severity", "warn",
                     f"{what} rises by more than " + f"{margin:g} with severity for " + "; ".join(problems)
                     + ": a broken transform, or a model that uses what the transform adds (a shortcut).")
    return Check(f"{what} falls with severity", "pass",
                 f"no transform gains more than {margin:g} {what} with severity or over clean.")


def _probe_check(metrics: dict[str, float], probe: str, severities: list[int], limit: float, *,
                 calls: str = "predictions") -> Check:
    flips = {s: metrics[f"flip_rate.{condition_name(probe, s)}"] for s in severities}
    s_max = max(flips, key=lambda s: flips[s])
    worst = flips[s_max]
    name = f"{probe} alone flips {calls}"
    if np.isfinite(worst) and worst > limit:
        return Check(name, "warn", f"the {probe} transform alone changes {worst:.1%} of {calls} (severity "
                     f"{s_max}; limit {limit:.0%}): the model reads burned-in text, a shortcut.")
    return Check(name, "pass", f"the {probe} transform changes at most {worst:.1%} of {calls} (limit {limit:.0%}).")


def _condition_table(metrics: dict[str, float], plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "condition": condition_name(t.name, s),
            "parameter": param_text(t.param(s)),
            "accuracy": metrics[f"accuracy.{condition_name(t.name, s)}"],
            "flip_rate": metrics[f"flip_rate.{condition_name(t.name, s)}"],
            "mean_confidence": metrics[f"mean_confidence.{condition_name(t.name, s)}"],
        }
        for t, s in plan.conditions
    ]


def _reference_name(ctx: AuditContext, study: str) -> str | None:
    ref = ctx.reference
    if ref is None or study not in ref.studies:
        return None
    return str(ref.model.get("name") or ref.model.get("fingerprint", "")[:12])
