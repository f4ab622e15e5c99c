"""Study ``smoothing``: certified L2 robustness by randomized smoothing (Cohen et al. 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, s^2 I)`` in [0, 1]
pixel units (before the model's own preprocessing), is certified with the paper's CERTIFY
(``n0`` selection draws, ``n`` estimation draws, a one-sided Clopper-Pearson bound at
``1 - alpha``) and its clean prediction read with PREDICT (a two-sided binomial test), for
each noise level ``s``; the math is :mod:`robustkit.metrics.smoothing`.

One path for every task kind: ``map`` counts the task's calls (``task.decide``) over the
noisy copies of each image. One label per image: the counts over classes make one
multi-class smoothed classifier. Several: each output's call (present / absent) is a binary
smoothed classifier with its own certificate. An image is certified correct at radius ``r``
when every call is right and certified at ``r`` or more.

Draws: draw ``j`` of stream ``t`` (selection or estimation) of sample ``i`` at noise ``s`` is
row ``j mod 32`` of a stateless normal block keyed by ``(seed, study, s, sample id, t,
j // 32)``, so the counts do not depend on batch sizes, shards or workers; the blocks run in
compiled batches of noisy copies (no Python loop per draw).

The consistency check: for ``check_samples`` images (chosen in ``prepare`` by a seeded hash of
their ids), at each ``s`` where one is certified, L2 PGD on the smoothed model
(:func:`~robustkit.model.smoothed.smoothed_l2_pgd`, SmoothAdv's loss) and on the base model
search the ball just inside the radius of its weakest certified call; PREDICT, on its own keyed
draws, at each point. A call there other than the certified one contradicts the certificate
(the reduce counts them and fails a check). The base model broken inside the radius is not one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit._tf import tf
from robustkit.errors import ConfigError, check_range
from robustkit.metrics.outputs import probabilities
from robustkit.metrics.smoothing import ABSTAIN, certify
from robustkit.model.smoothed import DRAWS_PER_KEY, keyed_normal, smoothed_l2_pgd
from robustkit.studies import register
from robustkit.studies.base import AuditContext, Records, Study, StudyConfig
from robustkit.studies.smoothing_reduce import call_counts, smoothing_reduce
from robustkit.task import Task

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter
    from robustkit.results import StudyResult

__all__ = ["DRAWS_PER_KEY", "SmoothingConfig", "SmoothingStudy", "noise_counts"]

_STREAMS = ("selection", "estimation")

#: the check attacks within this share of the certified radius (strictly inside the ball)
RADIUS_SHRINK = 0.999


@dataclass(frozen=True)
class SmoothingConfig(StudyConfig):
    """Options of the smoothing study.

    Attributes:
        sigmas: noise levels ``s`` (standard deviation in [0, 1] pixel units).
        n0: CERTIFY's selection draws.
        n: CERTIFY's estimation draws (also PREDICT's).
        alpha: CERTIFY's and PREDICT's error level (the certificate holds with ``1 - alpha``).
        radii: the L2 radii at which certified accuracy is reported.
        draw_batch: noisy copies per model call (None: the model's batch size, at least 32).
        abstain_warn: warn when the abstention rate at the smallest ``s`` exceeds this.
        check_samples: images (chosen by a seeded hash of their ids) whose certificates an attack
            tries to contradict, at every ``s`` where they are certified (0: no check).
        check_steps: steps of each of the check's two L2 PGD attacks.
        check_draws: noise draws ``m`` per step of the attack on the smoothed model.
    """

    sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    draw_batch: int | None = None
    abstain_warn: float = 0.3
    check_samples: int = 20
    check_steps: int = 20
    check_draws: int = 32

    def validate(self) -> None:
        super().validate()
        where = "study 'smoothing'"
        if not self.sigmas:
            raise ConfigError(f"The 'sigmas' parameter of {where} must be a non-empty list of numbers > 0. Got [] instead.")
        for s in self.sigmas:
            check_range("sigmas", s, low=0.0, low_open=True, where=where)
        for r in self.radii:
            check_range("radii", r, low=0.0, where=where)
        check_range("n0", self.n0, low=1, integer=True, where=where)
        check_range("n", self.n, low=1, integer=True, where=where)
        check_range("alpha", self.alpha, low=0.0, high=0.5, low_open=True, high_open=True, where=where)
        check_range("abstain_warn", self.abstain_warn, low=0.0, high=1.0, where=where)
        check_range("check_samples", self.check_samples, low=0, integer=True, where=where)
        check_range("check_steps", self.check_steps, low=1, integer=True, where=where)
        check_range("check_draws", self.check_draws, low=1, integer=True, where=where)
        if self.draw_batch is not None:
            check_range("draw_batch", self.draw_batch, low=1, integer=True, where=where)


@register
class SmoothingStudy(Study[SmoothingConfig]):
    name = "smoothing"
    description = (
        "A guarantee instead of an attack's best effort: the smoothed model (the majority call of "
        "the model over Gaussian-noised copies of an image) is certified, with probability "
        "1 - alpha, not to change its call within an L2 distance (the certified radius), by "
        "randomized smoothing (Cohen, Rosenfeld and Kolter 2019). Certified accuracy at radius r is "
        "the share of images whose smoothed call is right and certified at r or more; it falls as r "
        "grows. A larger noise level certifies larger radii but costs clean accuracy."
    )
    Config = SmoothingConfig
    multilabel = True
    default_profiles = ("standard", "full")  # quick: only when named
    profiles = {
        "quick": {"max_samples": 12, "sigmas": (0.25,), "n0": 8, "n": 64, "check_samples": 0},
        "standard": {"max_samples": 50, "n0": 32, "n": 480, "check_samples": 8, "check_steps": 10,
                     "check_draws": 16},
        "full": {"max_samples": 500},
    }
    metric_docs = {
        "certified_accuracy": ("certified_accuracy.<s>.<r>: share of images whose smoothed call at noise s is "
                               "right and certified at L2 radius r or more (every call, for multi-label)", "higher"),
        "acr": ("acr.<s>: average certified radius (0 for a wrong or abstained call; per image, the "
                "smallest radius over its calls)", "higher"),
        "abstention_rate": ("abstention_rate.<s>: share of CERTIFY decisions that abstain (pA's lower bound "
                            "below 1/2)", "lower"),
        "clean_accuracy": ("clean_accuracy.<s>: accuracy of the smoothed model's PREDICT (an abstention "
                           "counts as wrong; every call right, for multi-label)", "higher"),
        "predict_abstention_rate": ("predict_abstention_rate.<s>: share of PREDICT decisions that abstain",
                                    "lower"),
        "base_accuracy": ("accuracy of the base model on the same clean images (every call right, for "
                          "multi-label)", "higher"),
        "radius_ceiling": ("radius_ceiling.<s>: the largest radius n estimation draws can certify "
                           "(s * PhiInverse(alpha ** (1 / n)))", "none"),
        "certified_rate": ("certified_rate.<s>.<r>.present.<finding> (multi-label): share of images with the "
                           "finding whose call is right and certified at r or more; .absent.<finding>: the same "
                           "for images without it", "higher"),
        "n_samples": ("images certified", "none"),
        "contradictions": ("contradictions.<s>: checked images where an L2 attack found a point closer than the "
                           "certified radius at which the smoothed model's PREDICT gives another call; 0 when the "
                           "certificates are right (by chance at most about 3 alpha per checked image)", "lower"),
        "checked": ("checked.<s>: certified images an attack tried to contradict (see check_samples)", "none"),
    }
    headline = ("clean_accuracy.0.25", "certified_accuracy.0.25.0.5", "acr.0.25")
    #: the ids whose certificates the check attacks (set by :meth:`prepare`)
    check_ids: frozenset[str] = frozenset()

    def map(self, model: ModelAdapter, batch: Dataset, ctx: AuditContext) -> Records:
        h, w, c = model.input_shape
        x = batch.load_images(np.arange(len(batch)), size=(h, w), channels=c)
        task = ctx.task or Task.from_results(model.describe(), model.class_names)
        draws = {"selection": self.config.n0, "estimation": self.config.n}
        counts = {t: np.zeros((len(batch), len(self.config.sigmas), model.num_classes), np.int32) for t in _STREAMS}
        for i, sid in enumerate(batch.ids):
            for j, sigma in enumerate(self.config.sigmas):
                for stream in _STREAMS:
                    keys = _block_keys(ctx, self.name, sigma, str(sid), stream, draws[stream])
                    counts[stream][i, j] = noise_counts(model, x[i], keys, draws[stream], sigma, task,
                                                        draw_batch=self.config.draw_batch)
        clean = task.decide(probabilities(ctx.clean_logits(model, batch), model.output_kind))
        checks = [[self._check(model, x[i], str(sid), sigma, counts["selection"][i, j], counts["estimation"][i, j],
                               task, ctx) for j, sigma in enumerate(self.config.sigmas)] for i, sid in enumerate(batch.ids)]
        return {"counts0": counts["selection"], "counts": counts["estimation"], "base_calls": clean,
                **{f"check_{f.name}": np.array([[getattr(c, f.name) for c in row] for row in checks])
                   for f in fields(_Check)}}

    def prepare(self, data: Dataset, ctx: AuditContext) -> None:
        """Choose the images whose certificates the check attacks: the ``check_samples`` ids of
        lowest seeded hash (so a shard, a batch size or a worker checks the same images)."""
        rank = sorted((ctx.rng(self.name, "check", str(sid)).random(), str(sid)) for sid in data.ids)
        self.check_ids = frozenset(sid for _, sid in rank[:self.config.check_samples])

    def _check(self, model: ModelAdapter, x: np.ndarray, sid: str, sigma: float, c0: np.ndarray, c: np.ndarray,
               task: Task, ctx: AuditContext) -> _Check:
        """Search the certified ball of one image's weakest certified call for a point where the
        smoothed model calls otherwise: L2 PGD on the smoothed model and on the base model, to a
        radius just under the certified one, then PREDICT at each point on its own draws."""
        cfg, outputs = self.config, model.num_classes
        empty = _Check(-1, False, 0.0, np.zeros(2), np.zeros(2, bool), np.zeros((2, outputs), np.int32))
        if sid not in self.check_ids:
            return empty
        cert = certify(*call_counts(c0[None], c[None], exclusive=task.exclusive, n0=cfg.n0, n=cfg.n), sigma=sigma,
                       alpha=cfg.alpha)
        label, radius = cert.label[0], np.where(cert.label[0] == ABSTAIN, np.inf, cert.radius[0])
        if not np.isfinite(radius).any():  # no certified call: nothing to contradict
            return empty
        col = int(radius.argmin())  # exclusive: the one call; multi-label: the call that bounds the image's radius
        output, present = (int(label[col]), True) if task.exclusive else (col, bool(label[col]))
        threshold = None if task.exclusive or task.thresholds is None else float(task.thresholds[output])
        ball = float(radius[col]) * RADIUS_SHRINK
        per_step = -(-cfg.check_draws // DRAWS_PER_KEY)
        keys = _block_keys(ctx, self.name, sigma, sid, "attack", cfg.check_steps * per_step * DRAWS_PER_KEY)
        points = [smoothed_l2_pgd(model, x, output=output, present=present, radius=ball, threshold=threshold,
                                  sigma=s, keys=k, draws=m)
                  for s, k, m in ((sigma, keys.reshape(cfg.check_steps, per_step, 2), cfg.check_draws),
                                  (0.0, np.zeros((cfg.check_steps, 1, 2), np.int64), 1))]  # smoothed, base
        base_call = task.decide(probabilities(model.logits(points[1][None]), model.output_kind))[0, output]
        use = np.array([True, bool(base_call != present)])  # the base point only where it breaks the base model
        counts = np.zeros((2, outputs), np.int32)
        for p, stream in enumerate(("check-smoothed", "check-base")):
            if use[p]:
                counts[p] = noise_counts(model, points[p], _block_keys(ctx, self.name, sigma, sid, stream, cfg.n),
                                         cfg.n, sigma, task, draw_batch=cfg.draw_batch)
        distance = np.array([np.linalg.norm(p - x) for p in points])
        return _Check(output, present, float(radius[col]), distance, use, counts)

    def reduce(self, records: Records, data: Dataset, ctx: AuditContext) -> StudyResult:
        return smoothing_reduce(records, data, ctx, self.config)


@dataclass(frozen=True)
class _Check:
    """One image's check at one noise level (the ``check_*`` records; output -1: not checked)."""

    output: int
    present: bool
    radius: float
    distance: np.ndarray
    used: np.ndarray
    counts: np.ndarray


def _block_keys(ctx: AuditContext, study: str, sigma: float, sid: str, stream: str, n: int) -> np.ndarray:
    """``(ceil(n / DRAWS_PER_KEY), 2)`` int64 stateless seeds, one per block of draws."""
    blocks = -(-n // DRAWS_PER_KEY)
    base = ctx.rng(study, float(sigma), sid, stream).integers(0, 2**31 - 1, size=2)
    keys = np.empty((blocks, 2), np.int64)
    keys[:, 0] = base[0]
    keys[:, 1] = (int(base[1]) << 20) + np.arange(blocks)  # distinct for up to 2**20 blocks
    return keys


def noise_counts(model: ModelAdapter, x: np.ndarray, keys: np.ndarray, n: int, sigma: float, task: Task, *,
                 draw_batch: int | None = None) -> np.ndarray:
    """``(K,)`` how often each output is called over the first ``n`` draws of blocks ``keys``.

    Args:
        model: the adapter (its compiled logits graph).
        x: one image ``(H, W, C)`` in [0, 1].
        keys: ``(B, 2)`` stateless seeds, block ``b`` holding draws ``b * DRAWS_PER_KEY ...``.
        n: the number of draws used (at most ``B * DRAWS_PER_KEY``).
        sigma: the noise level.
        task: decides the calls of each noisy copy.
        draw_batch: noisy copies per model call (rounded up to whole blocks).
    """
    per_call = max(1, int(draw_batch or max(model.batch_size, DRAWS_PER_KEY)) // DRAWS_PER_KEY)
    graph = _graph(model)
    counts = np.zeros(model.num_classes, np.int64)
    xt = tf.constant(np.asarray(x, np.float32))
    for start in range(0, len(keys), per_call):
        used = min(n - start * DRAWS_PER_KEY, per_call * DRAWS_PER_KEY)
        logits = graph(xt, tf.constant(keys[start:start + per_call]), tf.constant(used, tf.int32),
                       tf.constant(sigma, tf.float32)).numpy()
        model.calls += 1
        counts += task.decide(probabilities(logits, model.output_kind)).sum(axis=0)
    return counts.astype(np.int32)


_GRAPHS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _graph(model: ModelAdapter) -> Any:
    """The compiled ``(x, keys, used, sigma) -> logits (used, K)`` of noisy copies of ``x``."""
    if model not in _GRAPHS:
        h, w, c = model.input_shape

        def noisy_logits(x: Any, keys: Any, used: Any, sigma: Any) -> Any:
            return model.logits_graph(x[None] + sigma * keyed_normal(keys, used, (h, w, c)))

        _GRAPHS[model] = tf.function(noisy_logits, autograph=False, input_signature=[
            tf.TensorSpec((h, w, c), tf.float32), tf.TensorSpec((None, 2), tf.int64),
            tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32)])
    return _GRAPHS[model]
