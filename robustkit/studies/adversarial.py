"""Study ``adversarial``: worst-case robustness, measured fast and checked for honesty.

Compiled PGD (Linf and L2; :mod:`robustkit.model.attacks`) runs an epsilon sweep in increasing
order, attacking at each radius only the samples that survived the smaller ones, so robust
accuracy is non-increasing by construction and each sample gets its minimal perturbation on
the grid. FGSM runs beside it as a sanity baseline; in the ``full`` profile foolbox's
DeepFool, Carlini-Wagner and a decision-based attack (HopSkipJump) add breadth on a small
subsample. Checks after Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and
Pintor et al. 2022 ("Indicators of Attack Failure") say whether the attack was strong enough
for the numbers to be believed (:mod:`robustkit.studies.adversarial_checks`).

Units: Linf radii are given in pixel units (``2 / 255``, a scalar or a list) and named and
reported in /255 units (``robust_accuracy.linf.2``); L2 radii are the L2 norm of the
perturbation over all pixels and channels of the [0, 1] image (``robust_accuracy.l2.0.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustkit.data.images import png_base64
from robustkit.errors import check_choice, check_range, param_error
from robustkit.metrics import classification as M
from robustkit.metrics.outputs import probabilities
from robustkit.model import attacks as A
from robustkit.results import StudyResult
from robustkit.studies import register
from robustkit.studies.adversarial_checks import CheckInputs, eps_name, run_checks
from robustkit.studies.base import AuditContext, Study, StudyConfig

if TYPE_CHECKING:
    from robustkit.data.dataset import Dataset
    from robustkit.model.adapter import ModelAdapter

__all__ = ["AdversarialConfig", "AdversarialStudy", "eps_name"]

NORMS = ("linf", "l2")
_WHERE = "study 'adversarial'"


def _as_sorted(values: Any) -> tuple[float, ...]:
    items = values if isinstance(values, (list, tuple)) else [values]
    return tuple(sorted({float(v) for v in items}))


@dataclass(frozen=True)
class AdversarialConfig(StudyConfig):
    """Options of the adversarial study.

    Attributes:
        norms: threat models to sweep, ``linf`` and/or ``l2``.
        epsilons_linf: Linf radii in pixel units (``0.5 / 255`` ... ``8 / 255``); a scalar
            or a list; sorted and de-duplicated.
        epsilons_l2: L2 radii (norm over all pixels and channels of the [0, 1] image).
        steps: PGD steps per run.
        step_size_factor: PGD step = ``step_size_factor * epsilon / steps``.
        restarts: PGD runs per sample and radius (later runs start at random points and
            attack only the samples still unbroken).
        random_start: start the first run at a random point of the ball.
        loss: ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner margin on the logits).
        targeted: push each sample to a target class (``target_class``, else its least
            likely class) instead of away from its label.
        target_class: the target class name of a targeted attack.
        fgsm: also run FGSM at the Linf radii (the check "FGSM vs PGD" needs it).
        large_epsilon_linf: the large radius (pixel units) of the check "near zero at a
            large epsilon".
        check_samples: samples used by the step/restart and determinism checks.
        tolerance: allowed change in robust accuracy for the sensitivity checks.
        foolbox_attacks: foolbox minimum-norm attacks to run (``deepfool``,
            ``carlini_wagner``, ``hop_skip_jump``, ``boundary``).
        foolbox_samples: clean-correct samples the foolbox attacks run on.
        n_bootstrap: bootstrap resamples of the 95% intervals.
        n_examples: adversarial examples in the report's gallery.
    """

    max_samples: int | None = 128
    norms: tuple[str, ...] = ("linf", "l2")
    epsilons_linf: tuple[float, ...] = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    epsilons_l2: tuple[float, ...] = (0.25, 0.5, 1.0)
    steps: int = 20
    step_size_factor: float = 2.5
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    targeted: bool = False
    target_class: str | None = None
    fgsm: bool = True
    large_epsilon_linf: float = 32 / 255
    check_samples: int = 32
    tolerance: float = 0.02
    foolbox_attacks: tuple[str, ...] = ()
    foolbox_samples: int = 16
    n_bootstrap: int = 1000
    n_examples: int = 6

    def __post_init__(self) -> None:
        for key in ("epsilons_linf", "epsilons_l2"):
            value = getattr(self, key)
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in np.atleast_1d(value)):
                object.__setattr__(self, key, _as_sorted(value))
        for key in ("norms", "foolbox_attacks"):
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))

    def validate(self) -> None:
        super().validate()
        if not self.norms:
            raise param_error("norms", "a non-empty list from 'linf', 'l2'", list(self.norms), where=_WHERE)
        for norm in self.norms:
            check_choice("norms", norm, NORMS, where=_WHERE)
        self._check_epsilons("epsilons_linf", self.epsilons_linf, high=1.0, needed="linf" in self.norms)
        self._check_epsilons("epsilons_l2", self.epsilons_l2, high=None, needed="l2" in self.norms)
        check_range("steps", self.steps, low=1, integer=True, where=_WHERE)
        check_range("step_size_factor", self.step_size_factor, low=0, low_open=True, where=_WHERE)
        check_range("restarts", self.restarts, low=1, integer=True, where=_WHERE)
        check_choice("loss", self.loss, A.LOSSES, where=_WHERE)
        check_range("large_epsilon_linf", self.large_epsilon_linf, low=0, high=1, low_open=True, where=_WHERE)
        check_range("check_samples", self.check_samples, low=1, integer=True, where=_WHERE)
        check_range("tolerance", self.tolerance, low=0, high=1, where=_WHERE)
        for name in self.foolbox_attacks:
            check_choice("foolbox_attacks", name, A.FOOLBOX_ATTACKS, where=_WHERE)
        check_range("foolbox_samples", self.foolbox_samples, low=1, integer=True, where=_WHERE)
        check_range("n_bootstrap", self.n_bootstrap, low=10, integer=True, where=_WHERE)
        check_range("n_examples", self.n_examples, low=0, integer=True, where=_WHERE)
        if self.target_class is not None and not self.targeted:
            raise param_error("target_class", "None unless 'targeted' is true", self.target_class, where=_WHERE)

    @staticmethod
    def _check_epsilons(key: str, values: tuple[float, ...], *, high: float | None, needed: bool) -> None:
        expected = f"a positive number{' <= 1 (pixel units)' if high else ''} or a list of them"
        if needed and not values:
            raise param_error(key, expected, list(values), where=_WHERE)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or (
                high is not None and v > high
            ):
                raise param_error(key, expected, v, where=_WHERE)


@register
class AdversarialStudy(Study):
    name = "adversarial"
    description = (
        "How much deliberate, worst-case change to the pixels the classifier survives. Projected "
        "gradient descent (PGD) searches, for every image, for a perturbation within a budget "
        "epsilon (Linf: no pixel changes by more than epsilon; L2: the perturbation's total "
        "length is at most epsilon) that changes the prediction. Robust accuracy is the share of "
        "images still classified correctly at each budget; the minimal perturbation is the "
        "smallest budget on the grid that broke an image. Read the curve from the left: the "
        "faster it falls, the more fragile the model; a COVID-19 case flipped to NORMAL is the "
        "costly error. The checks say whether the attack was strong enough to trust the numbers."
    )
    Config = AdversarialConfig
    profiles = {
        "quick": {"norms": ["linf"], "epsilons_linf": [1 / 255, 2 / 255, 4 / 255], "steps": 10,
                  "max_samples": 32, "n_bootstrap": 300, "check_samples": 16},
        "standard": {},
        "full": {"steps": 40, "restarts": 3, "max_samples": 256, "n_bootstrap": 2000,
                 "foolbox_attacks": ["deepfool", "carlini_wagner", "hop_skip_jump"]},
    }
    metric_docs = {
        "robust_accuracy": ("share of images still classified correctly under the attack at a budget "
                            "(clean errors count as wrong)", "higher"),
        "attack_success_rate": ("share of correctly classified images the attack broke at a budget", "lower"),
        "min_perturbation": ("smallest budget on the grid that broke an image (Linf in /255; 0: wrong "
                             "when clean; inf: not broken), median and quartiles", "higher"),
        "covid_to_normal_rate": ("share of correctly classified COVID-19 images the attack turned into "
                                 "NORMAL", "lower"),
        "foolbox": ("foolbox minimum-norm attacks on a subsample: perturbation sizes (L2; Linf in /255) "
                    "and success rate", "higher"),
    }
    headline = ("robust_accuracy.linf.1", "robust_accuracy.linf.2", "min_perturbation.linf.median",
                "robust_accuracy.l2.0.5")

    def run(self, model: ModelAdapter, data: Dataset, ctx: AuditContext) -> StudyResult:
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        h, w, c = model.input_shape
        x = data.load_images(np.arange(len(data)), size=(h, w), channels=c)
        y = np.asarray(data.labels, dtype=np.int64)
        logits = ctx.clean_logits(model, data)
        names = list(model.class_names)
        target = _targets(cfg, logits, y, names)
        keep = _gallery_candidates(y, logits.argmax(axis=1), names, 4 * cfg.n_examples)
        sweeps = {norm: A.epsilon_sweep(self._attack(norm), model, x, y, self._grid(norm), clean_logits=logits,
                                        target=target, keep=keep, seed=ctx.seed_for("adversarial", norm))
                  for norm in cfg.norms}
        fgsm = None
        if cfg.fgsm and "linf" in cfg.norms:
            fgsm = A.epsilon_sweep(A.FGSM(loss=cfg.loss, targeted=cfg.targeted), model, x, y, cfg.epsilons_linf,
                                   clean_logits=logits, target=target)
        foolbox = _run_foolbox(cfg, model, x, y, logits, ctx)
        result = StudyResult(name=self.name)
        columns = _fill_metrics(result, sweeps, fgsm, y, target, names)
        _fill_foolbox(result, foolbox, sweeps)
        result.intervals = _intervals(result.records["correct"], columns, y, cfg.n_bootstrap,
                                      ctx.seed_for("adversarial", "bootstrap"))
        inputs = CheckInputs(model=model, x=x, y=y, logits=logits, target=target, sweeps=sweeps, fgsm=fgsm,
                             foolbox=foolbox, make_attack=self._attack, seed=ctx.seed_for("adversarial", "checks"),
                             subset=np.sort(ctx.rng("adversarial", "checks").permutation(len(y))[: cfg.check_samples]),
                             tolerance=cfg.tolerance, large_epsilon_linf=cfg.large_epsilon_linf, loss=cfg.loss)
        result.checks, check_data = run_checks(inputs)
        result.data.update(
            class_names=names,
            clean_accuracy=float(np.mean(logits.argmax(axis=1) == y)) if len(y) else float("nan"),
            curves=_curves(result, sweeps, fgsm),
            histograms={norm: _histogram(s, y, names, norm) for norm, s in sweeps.items()},
            gallery=_gallery(x, y, probabilities(logits, model.output_kind), sweeps, names, cfg.n_examples, data.ids),
            loss_traces={norm: _nan_list(s.loss_traces) for norm, s in sweeps.items()},
            attack_loss=A.loss_description(cfg.loss, model.output_kind),
            gradient_evals={norm: int(s.gradient_evals) for norm, s in sweeps.items()},
            checks_data=check_data,
            correct_metrics=columns,
        )
        return result

    def _attack(self, norm: str, **changes: Any) -> A.GradientAttack:
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        options: dict[str, Any] = dict(steps=cfg.steps, step_size_factor=cfg.step_size_factor, restarts=cfg.restarts,
                                       random_start=cfg.random_start, loss=cfg.loss, targeted=cfg.targeted)
        options.update(changes)
        return (A.LinfPGD if norm == "linf" else A.L2PGD)(**options)

    def _grid(self, norm: str) -> tuple[float, ...]:
        cfg = self.config
        assert isinstance(cfg, AdversarialConfig)
        return cfg.epsilons_linf if norm == "linf" else cfg.epsilons_l2


# ------------------------------------------------------------------------------ inputs


def _targets(cfg: AdversarialConfig, logits: np.ndarray, y: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Target classes ``(N,)`` of a targeted attack: the configured class, else the least likely."""
    if not cfg.targeted:
        return None
    least = logits.argmin(axis=1)
    if cfg.target_class is None:
        return least
    if cfg.target_class not in names:
        raise param_error("target_class", "one of " + ", ".join(map(repr, names)), cfg.target_class, where=_WHERE)
    k = names.index(cfg.target_class)
    return np.where(y == k, least, k)


def _find_class(names: list[str], word: str) -> int | None:
    hits = [k for k, n in enumerate(names) if word.lower() in n.lower()]
    return hits[0] if hits else None


def _gallery_candidates(y: np.ndarray, pred: np.ndarray, names: list[str], n: int) -> list[int]:
    """Correctly classified samples, round-robin over classes, COVID-19 cases first."""
    covid = _find_class(names, "covid")
    order = sorted(range(len(names)), key=lambda k: (k != covid, k))
    pools = [list(np.flatnonzero((y == k) & (pred == y))) for k in order]
    out: list[int] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop(0)))
    return out


def _run_foolbox(cfg: AdversarialConfig, model: ModelAdapter, x: np.ndarray, y: np.ndarray,
                 logits: np.ndarray, ctx: AuditContext) -> dict[str, Any]:
    """Each configured foolbox attack on the same clean-correct subsample (positions kept)."""
    if not cfg.foolbox_attacks:
        return {}
    correct = np.flatnonzero(logits.argmax(axis=1) == y)
    chosen = np.sort(ctx.rng("adversarial", "foolbox").permutation(correct)[: cfg.foolbox_samples])
    out: dict[str, Any] = {"positions": chosen}
    for name in cfg.foolbox_attacks:
        out[name] = A.run_foolbox(name, model, x[chosen], y[chosen], seed=ctx.seed_for("adversarial", "foolbox", name))
    return out


# ------------------------------------------------------------------------------ metrics


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    if values.size == 0:
        return (float("nan"),) * 3
    q = np.quantile(values, [0.25, 0.5, 0.75], method="lower")  # on the grid, inf allowed
    return float(q[0]), float(q[1]), float(q[2])


def _fill_metrics(result: StudyResult, sweeps: dict[str, A.SweepResult], fgsm: A.SweepResult | None,
                  y: np.ndarray, target: np.ndarray | None, names: list[str]) -> list[str]:
    """Robust accuracy, success rates, minimal perturbations; records; returns correct columns."""
    m, columns, correct = result.metrics, [], []
    clean_ok = sweeps[next(iter(sweeps))].min_eps > 0
    covid, normal = _find_class(names, "covid"), _find_class(names, "normal")
    for norm, s in sweeps.items():
        unit = 255.0 if norm == "linf" else 1.0
        for k, eps in enumerate(s.epsilons):
            e = eps_name(norm, eps)
            columns.append(f"robust_accuracy.{norm}.{e}")
            correct.append(s.correct[:, k])
            m[columns[-1]] = float(s.correct[:, k].mean())
            hit = (s.adv_pred[:, k] == target) if target is not None else ~s.correct[:, k]
            m[f"attack_success_rate.{norm}.{e}"] = _rate(hit, clean_ok)
            if covid is not None and normal is not None:
                m[f"covid_to_normal_rate.{norm}.{e}"] = _rate(s.adv_pred[:, k] == normal, clean_ok & (y == covid))
        q25, q50, q75 = _quartiles(s.min_eps * unit)
        m.update({f"min_perturbation.{norm}.median": q50, f"min_perturbation.{norm}.q25": q25,
                  f"min_perturbation.{norm}.q75": q75})
        for k, name in enumerate(names):
            m[f"min_perturbation.{norm}.median.{name}"] = _quartiles(s.min_eps[y == k] * unit)[1]
        result.records[f"min_eps_{norm}"] = s.min_eps.astype(np.float32)
        result.records[f"adv_pred_{norm}"] = s.adv_pred.astype(np.int16)
    if fgsm is not None:
        for k, eps in enumerate(fgsm.epsilons):
            columns.append(f"robust_accuracy.fgsm.linf.{eps_name('linf', eps)}")
            correct.append(fgsm.correct[:, k])
            m[columns[-1]] = float(fgsm.correct[:, k].mean())
    m["n_samples"] = float(len(y))
    result.records["correct"] = np.stack(correct, axis=1)
    return columns


def _rate(hit: np.ndarray, among: np.ndarray) -> float:
    return float(np.mean(hit[among])) if np.any(among) else float("nan")


def _intervals(correct: np.ndarray, columns: list[str], y: np.ndarray, n_boot: int, seed: int) -> dict[str, list[float]]:
    if len(y) < 2:
        return {}
    lo, hi = M.bootstrap_interval(lambda idx: correct[idx].mean(axis=0), len(y), n_boot=n_boot, seed=seed, strata=y)
    return {name: [float(a), float(b)] for name, a, b in zip(columns, lo, hi)}


def _fill_foolbox(result: StudyResult, foolbox: dict[str, Any], sweeps: dict[str, A.SweepResult]) -> None:
    """Per attack: success rate and L2 (and Linf in /255) perturbation quartiles; the table."""
    if not foolbox:
        return
    pos = foolbox["positions"]
    rows: list[dict[str, Any]] = []
    for name, r in foolbox.items():
        if name == "positions":
            continue
        q25, q50, q75 = _quartiles(r.l2)
        linf = _quartiles(r.linf * 255)[1]
        result.metrics.update({f"foolbox.{name}.success_rate": float(r.success.mean()) if len(pos) else float("nan"),
                               f"foolbox.{name}.median_l2": q50, f"foolbox.{name}.q25_l2": q25,
                               f"foolbox.{name}.q75_l2": q75, f"foolbox.{name}.median_linf": linf})
        result.directions[f"foolbox.{name}.success_rate"] = "lower"
        rows.append({"attack": name, "kind": "decision-based" if name in A.DECISION_ATTACKS else "gradient",
                     "samples": len(pos), "success_rate": result.metrics[f"foolbox.{name}.success_rate"],
                     "median_l2": q50, "q25_l2": q25, "q75_l2": q75, "median_linf_255": linf})
    for norm, s in sweeps.items():
        unit = 255.0 if norm == "linf" else 1.0
        q25, q50, q75 = _quartiles(s.min_eps[pos] * unit)
        rows.append({"attack": f"PGD {norm} (grid)", "kind": "gradient (this study)", "samples": len(pos),
                     "success_rate": float(np.isfinite(s.min_eps[pos]).mean()) if len(pos) else float("nan"),
                     "median_l2": q50 if norm == "l2" else None, "q25_l2": q25 if norm == "l2" else None,
                     "q75_l2": q75 if norm == "l2" else None, "median_linf_255": q50 if norm == "linf" else None})
    result.tables["foolbox"] = rows


# ------------------------------------------------------------------------------ report data


def _nan_list(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


def _curves(result: StudyResult, sweeps: dict[str, A.SweepResult], fgsm: A.SweepResult | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for norm, s in sweeps.items():
        curve: dict[str, Any] = {"unit": "/255" if norm == "linf" else "L2", "epsilons": [], "pgd": [], "low": [],
                                 "high": []}
        for eps in s.epsilons:
            name = f"robust_accuracy.{norm}.{eps_name(norm, eps)}"
            lo, hi = result.intervals.get(name, [float("nan")] * 2)
            curve["epsilons"].append(float(eps * 255 if norm == "linf" else eps))
            curve["pgd"].append(result.metrics[name])
            curve["low"].append(lo)
            curve["high"].append(hi)
        if norm == "linf" and fgsm is not None:
            curve["fgsm"] = [result.metrics[f"robust_accuracy.fgsm.linf.{eps_name('linf', e)}"] for e in fgsm.epsilons]
        out[norm] = curve
    return out


def _histogram(s: A.SweepResult, y: np.ndarray, names: list[str], norm: str) -> dict[str, Any]:
    """Counts per class of the minimal perturbation: clean error (0), each radius, not broken (None)."""
    bins = np.r_[0.0, s.epsilons, np.inf]
    counts = {name: [int(np.sum((y == k) & (s.min_eps == b))) for b in bins] for k, name in enumerate(names)}
    unit = 255.0 if norm == "linf" else 1.0
    return {"unit": "/255" if norm == "linf" else "L2",
            "bins": [round(float(b) * unit, 6) if np.isfinite(b) else None for b in bins], "counts": counts}


def _magnified(delta: np.ndarray) -> np.ndarray:
    """A perturbation shown around mid-grey: 0.5 + 0.5 * delta / max|delta|."""
    scale = float(np.abs(delta).max())
    return 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)


def _gallery(x: np.ndarray, y: np.ndarray, probs: np.ndarray, sweeps: dict[str, A.SweepResult],
             names: list[str], n: int, ids: np.ndarray) -> list[dict[str, Any]]:
    """Clean image, magnified perturbation and adversarial image for a few broken samples."""
    if n <= 0 or not sweeps:
        return []
    norm = "linf" if "linf" in sweeps else next(iter(sweeps))
    s = sweeps[norm]
    covid, normal = _find_class(names, "covid"), _find_class(names, "normal")

    def flips(i: int) -> bool:
        k = int(np.searchsorted(s.epsilons, s.min_eps[i]))
        return covid is not None and y[i] == covid and s.adv_pred[i, k] == normal

    flipped = sorted((i for i in s.kept if flips(i)), key=lambda i: (s.min_eps[i], i))[: max(1, n // 2)]
    rest = sorted((i for i in s.kept if i not in flipped), key=lambda i: (s.min_eps[i], y[i], i))
    chosen = (flipped + rest)[:n]
    out = []
    for i in chosen:
        k = int(np.searchsorted(s.epsilons, s.min_eps[i]))
        adv = s.kept[i]
        eps = s.min_eps[i]
        out.append({
            "id": str(ids[i]), "label": names[int(y[i])], "clean_pred": names[int(probs[i].argmax())],
            "clean_confidence": float(probs[i].max()), "adv_pred": names[int(s.adv_pred[i, k])],
            "adv_confidence": float(s.adv_conf[i, k]), "norm": norm,
            "epsilon": f"{eps_name(norm, eps)}/255" if norm == "linf" else f"L2 {eps_name(norm, eps)}",
            "clean_png": png_base64(x[i], max_side=96), "delta_png": png_base64(_magnified(adv - x[i]), max_side=96),
            "adv_png": png_base64(adv, max_side=96),
        })
    return out
