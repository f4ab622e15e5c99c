"""The audit runner: model + data + config -> studies -> results on disk, resumable.

Each finished study is written (``results.json`` + ``records.npz``, atomically) before the
next one starts. A re-run into the same folder reuses every finished study whose model,
data, seed and study config are unchanged, so an interrupted audit resumes and an
unchanged checkpoint in CI costs nothing; ``fresh=True`` starts over.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robustkit import __version__
from robustkit.config import AuditConfig, load_config
from robustkit.data.dataset import Dataset, load_dataset
from robustkit.errors import DataError, ModelError, RobustkitError
from robustkit.model.adapter import ModelAdapter, load_model
from robustkit.results import (
    RESULTS_FILE,
    AuditResult,
    StudyResult,
    atomic_write_text,
    load_results,
    save_results,
)
from robustkit.studies import AuditContext, Study, available, get_study

__all__ = ["audit", "plan_studies"]


def plan_studies(config: AuditConfig) -> list[Study]:
    """The configured study objects, in audit order (``clean`` always runs first).

    The override tables of studies that are not run are validated too, so that a bad value
    in a config file is reported whichever studies a run selects.
    """
    names = list(config.studies) if config.studies else available()
    ordered = ["clean"] + [n for n in names if n != "clean"]
    for name, overrides in config.overrides.items():
        if name not in ordered:
            get_study(name).configure(config.profile, overrides)
    return [get_study(n).configure(config.profile, config.overrides.get(n)) for n in ordered]


def _environment() -> dict[str, Any]:
    from robustkit._tf import keras, tf

    devices = [d.device_type for d in tf.config.list_physical_devices()]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "device": "GPU" if "GPU" in devices else "CPU",
    }


def _align(model: ModelAdapter, data: Dataset) -> Dataset:
    """Put the dataset's labels in the model's class order (or name the model's classes)."""
    if all(n == f"class_{k}" for k, n in enumerate(model.class_names)):
        if len(data.class_names) != model.num_classes:
            raise ModelError(
                f"{model.name}: expected an output per class of the dataset ({len(data.class_names)}: "
                f"{', '.join(data.class_names)}), got {model.num_classes} outputs."
            )
        model.class_names = list(data.class_names)
        return data
    return data.with_class_order(list(model.class_names))


def _load_data(data: str | Path, cfg: AuditConfig, on_bad_input: str) -> Dataset:
    """Load the dataset with the config's class map, excluded classes and mask kind."""
    return load_dataset(data, on_bad_input=on_bad_input, class_map=cfg.class_map,
                        exclude_classes=cfg.exclude_classes, merge_classes=cfg.merge_classes,
                        masks=cfg.masks)


def _previous(out: Path | None, fresh: bool, model: ModelAdapter, data: Dataset, seed: int) -> AuditResult | None:
    if out is None or fresh or not (out / RESULTS_FILE).is_file():
        return None
    try:
        prev = load_results(out)
    except RobustkitError:
        return None
    same = (
        prev.model.get("fingerprint") == model.fingerprint
        and prev.dataset.get("fingerprint") == data.fingerprint
        and prev.config.get("seed") == seed
        and list(map(str, prev.ids)) == list(map(str, data.ids))
    )
    return prev if same else None


def audit(
    model: str | Path | ModelAdapter,
    data: str | Path | Dataset,
    *,
    studies: list[str] | tuple[str, ...] | None = None,
    profile: str | None = None,
    seed: int | None = None,
    config: str | Path | Mapping[str, Any] | AuditConfig | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    fresh: bool = False,
    quiet: bool = True,
    report: bool = True,
    reference: str | Path | AuditResult | None = None,
    trust_model: bool = False,
    on_bad_input: str = "fail",
    input_scale: str | None = None,
    class_map: Mapping[str, str] | None = None,
    exclude_classes: list[str] | tuple[str, ...] | None = None,
    masks: str | None = None,
    merge_classes: bool | None = None,
) -> AuditResult:
    """Audit a classifier and return (and, with ``out``, write) the :class:`AuditResult`.

    Args:
        model: a checkpoint path or a :class:`ModelAdapter`.
        data: a dataset folder / CSV manifest or a :class:`Dataset`.
        studies: study names to run (``clean`` always runs); default every available one.
        profile: ``quick``, ``standard`` (default) or ``full``.
        seed: the seed of every random choice.
        config: an audit config (TOML path, dict or :class:`AuditConfig`); arguments given
            here take precedence over it.
        out: folder for ``results.json``, ``records.npz`` and ``report.html``.
        limit: audit a seeded, stratified subsample of this many images.
        batch_size: images per model call (default: chosen from the input size).
        fresh: ignore finished studies in ``out`` and start over.
        quiet: no progress bars.
        report: render ``report.html`` into ``out`` at the end.
        reference: an earlier audit (folder or result) for relative metrics such as the
            corruption error.
        trust_model: allow checkpoints with serialized code (Keras safe mode off).
        on_bad_input: ``fail`` or ``skip`` unreadable images.
        input_scale: the range the checkpoint expects (``unit`` [0, 1], ``255``, ``symmetric``
            [-1, 1]); default: its ``.meta.json``, else ``unit``.
        class_map: ``{data class: model class}`` renames applied before the class check
            (added to the config's ``[classes]``).
        exclude_classes: data classes set aside as the out-of-scope set (counted in
            ``results.json``'s dataset block).
        masks: what the data's ``masks`` files are: ``lesion``, ``lung`` or ``none``.
        merge_classes: allow ``class_map`` to send two data classes to one model class.

    Example:
        >>> result = audit("demo.keras", "data/phantom", profile="quick", out="reports/a")  # doctest: +SKIP
        >>> result.metric("clean.accuracy")                                                 # doctest: +SKIP
    """
    cfg = config if isinstance(config, AuditConfig) else load_config(config)  # type: ignore[arg-type]
    cfg = cfg.merged(seed=seed, profile=profile, limit=limit, batch_size=batch_size, studies=studies,
                     class_map=dict(class_map) if class_map else None, exclude_classes=exclude_classes,
                     masks=masks, merge_classes=merge_classes)
    plan = plan_studies(cfg)
    adapter = model if isinstance(model, ModelAdapter) else load_model(
        model, trust=trust_model, batch_size=cfg.batch_size, input_scale=input_scale
    )
    if cfg.batch_size:
        adapter.batch_size = cfg.batch_size
    dataset = data if isinstance(data, Dataset) else _load_data(data, cfg, on_bad_input)
    dataset = _align(adapter, dataset)
    if cfg.limit is not None:
        dataset = dataset.subsample(cfg.limit, seed=cfg.seed)
    if len(dataset) == 0:
        raise DataError(f"{dataset.root}: expected at least one image to audit, got none.")
    out_dir = Path(out) if out is not None else None
    ref = load_results(reference) if isinstance(reference, (str, Path)) else reference
    prev = _previous(out_dir, fresh, adapter, dataset, cfg.seed)
    result = _new_result(adapter, dataset, cfg, plan)
    ctx = AuditContext(seed=cfg.seed, quiet=quiet, progress=_progress_factory(), reference=ref)
    start = time.perf_counter()
    for study in plan:
        done = prev.studies.get(study.name) if prev else None
        if done is not None and done.status == "ok" and done.config == study.config_dict():
            result.studies[study.name] = done
            _say(quiet, f"{study.name}: reused from {out_dir}")
            continue
        result.studies[study.name] = _run_one(study, adapter, dataset, ctx, quiet)
        result.seconds = time.perf_counter() - start
        if out_dir is not None:
            save_results(result, out_dir)
    result.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_results(result, out_dir)
        _write_exports(result, out_dir)
        if report:
            from robustkit.report import render_report

            render_report(result, out_dir / "report.html")
    return result


def _write_exports(result: AuditResult, out: Path) -> None:
    """Small files a deployment reads: ``temperature.json`` from the calibration study."""
    cal = result.studies.get("calibration")
    export = cal.data.get("temperature_export") if cal is not None and cal.status == "ok" else None
    if export:
        atomic_write_text(out / "temperature.json", json.dumps(export, indent=2) + "\n")


def _run_one(study: Study, model: ModelAdapter, data: Dataset, ctx: AuditContext, quiet: bool) -> StudyResult:
    _say(quiet, f"{study.name}: running {study!r}")
    t0 = time.perf_counter()
    try:
        res = study.execute(model, data, ctx)
    except RobustkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken study must not lose the others
        if study.name == "clean":
            raise
        msg = f"{type(exc).__name__}: {exc}"
        _say(quiet, f"{study.name}: FAILED ({msg})")
        return StudyResult(name=study.name, status="failed", seconds=time.perf_counter() - t0,
                           config=study.config_dict(), error=msg[:2000])
    _say(quiet, f"{study.name}: done in {res.seconds:.1f} s")
    return res


def _new_result(model: ModelAdapter, data: Dataset, cfg: AuditConfig, plan: list[Study]) -> AuditResult:
    return AuditResult(
        model=model.describe(),
        dataset=data.describe(),
        config={
            "seed": cfg.seed,
            "profile": cfg.profile,
            "limit": cfg.limit,
            "batch_size": model.batch_size,
            "studies": {s.name: s.config_dict() for s in plan},
        },
        environment=_environment(),
        ids=np.asarray(data.ids).astype(str),
        labels=np.asarray(data.labels, dtype=np.int64),
        class_names=list(model.class_names),
        robustkit_version=__version__,
        metadata=data.metadata,
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    )


def _progress_factory() -> Any:
    from tqdm.auto import tqdm

    def bar(*, total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True, file=sys.stderr)

    return bar


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)
