"""The audit runner: model + data + config -> studies -> results on disk, resumable.

Each finished study is written (``results.json`` + ``records.npz``, atomically) before the
next one starts. A re-run into the same folder reuses every finished study whose model,
data, seed and study config are unchanged, so an interrupted audit resumes and an
unchanged checkpoint in CI costs nothing; ``fresh=True`` starts over.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import platform
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robustkit import __version__
from robustkit.config import (
    AuditConfig,
    DataIntake,
    EngineSpec,
    ModelSpec,
    group_options,
    load_config,
)
from robustkit.data.dataset import Dataset
from robustkit.data.loader import load_dataset
from robustkit.errors import ConfigError, DataError, ModelError, RobustkitError
from robustkit.model.adapter import ModelAdapter, load_model, without_single_label_advice
from robustkit.results import (
    RESULTS_FILE,
    AuditResult,
    StudyResult,
    atomic_write_bytes,
    atomic_write_text,
    load_results,
    save_results,
)
from robustkit.studies import AuditContext, Study, available, get_study
from robustkit.task import Task, resolve_critical

__all__ = ["align_classes", "audit", "input_probe_table", "plan_studies"]


def plan_studies(config: AuditConfig) -> list[Study]:
    """The configured study objects, in audit order (``clean`` always runs first).

    The override tables of studies that are not run are validated too, so that a bad value
    in a config file is reported whichever studies a run selects.
    """
    names = list(config.studies) if config.studies else [
        n for n in available() if config.profile in get_study(n).default_profiles]
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


def _load(path: str | Path, spec: ModelSpec, cfg: AuditConfig) -> ModelAdapter:
    """The checkpoint as an adapter, read as the model options and the config's [model] say."""
    return load_model(
        path, trust=spec.trust_model, batch_size=cfg.batch_size, input_scale=spec.input_scale, output=spec.output,
        preprocess=spec.preprocess, input_mean=spec.input_mean, input_std=spec.input_std, channel_order=spec.channel_order,
        class_names=list(spec.model_classes) if spec.model_classes is not None else None,
        input_size=tuple(spec.input_size) if spec.input_size is not None else None)  # type: ignore[arg-type]


def align_classes(model: ModelAdapter, data: Dataset) -> Dataset:
    """Put the dataset's labels in the model's class order; a model whose outputs are not
    named (no sidecar, no --model-classes) takes the data's class names, stated as assumed."""
    if model.class_order_source.startswith("unknown"):
        if len(data.class_names) != model.num_classes:
            raise ModelError(
                f"{model.name}: expected an output per class of the dataset ({len(data.class_names)}: "
                f"{', '.join(data.class_names)}), got {model.num_classes} outputs."
            )
        model.class_names = list(data.class_names)
        model.class_order_source = (f"assumed from the data's class names ({', '.join(data.class_names)}); "
                                    "declare it with --model-classes")
        return data
    return data.with_class_order(list(model.class_names))


def input_probe_table(model: ModelAdapter, data: Dataset, *, seed: int, size: int | None = None) -> dict[str, Any]:
    """The input probe's table (:func:`robustkit.model.probe.run_probe`) on a seeded stratified
    subsample of ``data`` (64 images by default), which is in the model's class order."""
    from robustkit.model.probe import PROBE_SIZE, run_probe

    probe = data.subsample(min(size or PROBE_SIZE, len(data)), seed=seed)
    h, w, c = model.input_shape
    x = probe.load_images(range(len(probe)), size=(h, w), channels=c)
    y = probe.targets if model.output_kind == "multilabel" else probe.labels
    return run_probe(model, x, y)


def _input_probe(model: ModelAdapter, data: Dataset, enabled: bool, seed: int, quiet: bool) -> None:
    """The input probe (:mod:`robustkit.model.probe`) before any study: its table on the
    model's description; a declared setup the probe clearly refutes stops the audit here."""
    if not enabled:
        model.input_probe = {"skipped": "--no-input-probe (input_probe = false)"}
        return
    table = input_probe_table(model, data, seed=seed)
    model.input_probe = table
    if table["verdict"] == "stop":
        raise ConfigError(f"{model.name}: {table['message']} ({table['n']} probe images; check the model's "
                          "documentation, or pass --no-input-probe to audit the declared setup anyway).")
    if table["verdict"] == "warn":
        _say(quiet, f"input probe: {table['message']}")


def _load_data(data: str | Path, cfg: AuditConfig, on_bad_input: str) -> Dataset:
    """Load the dataset with the config's class map, excluded classes and mask kind (a
    manifest with ``A|B`` or "No Finding" labels is read as multi-label)."""
    return load_dataset(data, on_bad_input=on_bad_input, class_map=cfg.class_map,
                        exclude_classes=cfg.exclude_classes, merge_classes=cfg.merge_classes,
                        masks=cfg.masks, strict_metadata=cfg.strict_metadata)


def _match_output_kind(model: ModelAdapter, data: Dataset, output: str | None) -> None:
    """A multi-label manifest needs a multi-label model: a detected sigmoid head is read as
    one; a softmax or logits model, or ``--output sigmoid``, is refused."""
    kind = model.output_kind
    if not data.multilabel:
        if kind == "multilabel":
            model.output_kind_reason += "; the data is single-label: each image's class is its one finding"
        return
    if kind == "sigmoid" and output != "sigmoid":
        model.output_kind = "multilabel"
        model.output_kind_reason = (without_single_label_advice(model.output_kind_reason)
                                    + "; the data is multi-label (sets of findings), so audited as multilabel")
        return
    if kind != "multilabel":
        given = "--output sigmoid" if output == "sigmoid" else f"a {kind} model"
        raise ConfigError(f"{data.root}: expected single-label data for {given} (one class per image), got a "
                          "multi-label manifest (labels such as 'A|B' or 'No Finding'); pass --output "
                          "multilabel if the model's outputs are independent sigmoids.")


def _multilabel_plan(plan: list[Study], model: ModelAdapter, cfg: AuditConfig, quiet: bool) -> list[Study]:
    """A multi-label audit runs the studies that score findings; one asked for by name that
    does not is refused, the others are left out with a line saying so."""
    if model.output_kind != "multilabel":
        return plan
    unable = [s.name for s in plan if not type(s).multilabel]
    asked = [n for n in unable if cfg.studies and n in cfg.studies]
    if asked:
        raise ConfigError(f"--studies: expected studies that score multi-label models, got {', '.join(asked)} "
                          "(they score one class per image); leave them out.")
    if unable:
        _say(quiet, f"multi-label model: left out {', '.join(unable)} (they score one class per image)")
    return [s for s in plan if type(s).multilabel]


def _set_thresholds(model: ModelAdapter, data: Dataset, ctx: AuditContext, given: float | None) -> None:
    """Multi-label audits: each finding's decision threshold, given or chosen by Youden's J on
    the calibration half of the images (:func:`robustkit.metrics.multilabel.threshold_split`)."""
    from robustkit.metrics import multilabel as ML
    from robustkit.metrics.outputs import probabilities

    if model.output_kind != "multilabel":
        if given is not None:
            raise ConfigError(f"--threshold {given}: expected a multi-label audit (--output multilabel), "
                              f"got a {model.output_kind} model; single-label metrics use the arg-max.")
        return
    k = len(model.class_names)
    if given is not None:
        model.thresholds, model.threshold_source = np.full(k, float(given)), f"given (--threshold {given:g})"
        return
    calib = ML.threshold_split(data.ids)
    probs = probabilities(ctx.clean_logits(model, data.subset(np.flatnonzero(calib))), "multilabel")
    model.thresholds = ML.youden_thresholds(data.subset(np.flatnonzero(calib)).targets, probs)
    model.threshold_source = (f"chosen per finding by Youden's J on the calibration half ({int(calib.sum())} of "
                              f"{len(calib)} images, by sample id); thresholded metrics are read on the other half")


def _task(model: ModelAdapter, cfg: AuditConfig) -> Task:
    """The audit's task model: the model's outputs, their decision rule, the critical class."""
    thresholds = None if model.thresholds is None else tuple(float(t) for t in model.thresholds)
    return Task(names=tuple(model.class_names), exclusive=model.output_kind != "multilabel",
                critical=resolve_critical(cfg.critical_class, model.class_names),
                thresholds=thresholds, threshold_source=model.threshold_source if thresholds else None)


def _previous(out: Path | None, fresh: bool, model: ModelAdapter, data: Dataset, seed: int,
              task: Task) -> AuditResult | None:
    if out is None or fresh or not (out / RESULTS_FILE).is_file():
        return None
    try:
        prev = load_results(out)
    except RobustkitError:
        return None
    same = (
        prev.model.get("fingerprint") == model.fingerprint
        and prev.model.get("output_kind", "softmax") == model.output_kind  # same model, other reading
        and prev.model.get("thresholds") == model.describe().get("thresholds")
        and prev.dataset.get("fingerprint") == data.fingerprint
        and prev.config.get("seed") == seed
        and prev.task.get("critical_class") == task.critical  # the studies' reduces read it
        and list(map(str, prev.ids)) == list(map(str, data.ids))
    )
    return prev if same else None


def audit(
    model: str | Path | ModelAdapter,
    data: str | Path | Dataset,
    *,
    out: str | Path | None = None,
    studies: list[str] | tuple[str, ...] | None = None,
    profile: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    config: str | Path | Mapping[str, Any] | AuditConfig | None = None,
    critical_class: str | None = None,
    model_spec: ModelSpec | None = None,
    intake: DataIntake | None = None,
    engine: EngineSpec | str | None = None,
    reference: str | Path | AuditResult | None = None,
    batch_size: int | None = None,
    fresh: bool = False,
    quiet: bool = True,
    report: bool = True,
    **shortcuts: Any,
) -> AuditResult:
    """Audit a classifier and return (and, with ``out``, write) the :class:`AuditResult`.

    The options come in the groups of the audit config: how the checkpoint is read
    (:class:`~robustkit.config.ModelSpec`), how the data is taken in
    (:class:`~robustkit.config.DataIntake`) and where the maps run
    (:class:`~robustkit.config.EngineSpec`). Each group's fields are also accepted one by one
    as keywords (the shortcuts: ``audit(m, d, masks="lung", workers=4, engine="ray")``).

    Args:
        model: a checkpoint path or a :class:`ModelAdapter`.
        data: a dataset folder / CSV manifest or a :class:`Dataset`.
        out: folder for ``results.json``, ``records.npz`` and ``report.html``.
        studies: study names to run (``clean`` always runs); default every available one.
        profile: ``quick``, ``standard`` (default) or ``full``.
        seed: the seed of every random choice.
        limit: audit a seeded, stratified subsample of this many images.
        config: an audit config (TOML path, dict or :class:`AuditConfig`); arguments given
            here take precedence over it.
        critical_class: the output whose misses cost most (:mod:`robustkit.task`); default:
            the config's ``critical_class``, else none (the numbers that need one say so).
        model_spec: trust, input scale, output kind and multi-label threshold.
        intake: class map, excluded classes, class merging, mask kind, bad-input policy,
            strict metadata.
        engine: ``"inprocess"``, ``"ray"`` or an :class:`~robustkit.config.EngineSpec`.
        reference: an earlier audit (folder or result) for relative metrics such as the
            corruption error (the CLI's ``--ce-reference``).
        batch_size: images per model call (default: chosen from the input size).
        fresh: ignore finished studies in ``out`` and start over.
        quiet: no progress bars.
        report: render ``report.html`` into ``out`` at the end.
        **shortcuts: any field of the three groups by name (``trust_model``, ``input_scale``,
            ``output``, ``threshold``; ``class_map``, ``exclude_classes``, ``merge_classes``,
            ``masks``, ``on_bad_input``, ``strict_metadata``; ``ray_address``, ``workers``, ``cpus_per_worker``,
            ``gpus_per_worker``, ``ray_connect_timeout``; ``preprocess``, ``input_mean``, ``input_std``,
            ``channel_order``, ``model_classes``, ``input_size``, ``input_probe``).

    Example:
        >>> result = audit("demo.keras", "data/phantom", profile="quick", out="reports/a")  # doctest: +SKIP
        >>> result.metric("clean.accuracy")                                                 # doctest: +SKIP
    """
    spec, take, run_on = group_options(shortcuts, model=model_spec, intake=intake, engine=engine)
    cfg = config if isinstance(config, AuditConfig) else load_config(config)  # type: ignore[arg-type]
    cfg = cfg.merged(seed=seed, profile=profile, limit=limit, batch_size=batch_size, studies=studies,
                     engine=run_on.table(), class_map=dict(take.class_map) if take.class_map else None,
                     exclude_classes=take.exclude_classes, masks=take.masks, merge_classes=take.merge_classes,
                     threshold=spec.threshold, critical_class=critical_class,
                     strict_metadata=take.strict_metadata)
    spec = spec.filled(cfg.model)
    trust_model, output, on_bad_input = spec.trust_model, spec.output, take.on_bad_input
    ray_options = _ray_options(cfg)
    plan = plan_studies(cfg)
    adapter = model if isinstance(model, ModelAdapter) else _load(model, spec, cfg)
    _check_output_kind(adapter, output)
    if isinstance(model, ModelAdapter):
        _refuse_load_options(spec)
    if cfg.batch_size:
        adapter.batch_size = cfg.batch_size
    dataset = data if isinstance(data, Dataset) else _load_data(data, cfg, on_bad_input)
    _match_output_kind(adapter, dataset, output)
    dataset = align_classes(adapter, dataset)
    if cfg.limit is not None:
        dataset = dataset.subsample(cfg.limit, seed=cfg.seed)
    if len(dataset) == 0:
        raise DataError(f"{dataset.root}: expected at least one image to audit, got none.")
    _input_probe(adapter, dataset, spec.input_probe is not False, cfg.seed, quiet)
    out_dir = Path(out) if out is not None else None
    ref = load_results(reference) if isinstance(reference, (str, Path)) else reference
    ctx = AuditContext(seed=cfg.seed, quiet=quiet, progress=_progress_factory(), reference=ref)
    _set_thresholds(adapter, dataset, ctx, cfg.threshold)
    ctx.task = _task(adapter, cfg)
    plan = _multilabel_plan(plan, adapter, cfg, quiet)
    prev = _previous(out_dir, fresh, adapter, dataset, cfg.seed, ctx.task)
    result = _new_result(adapter, dataset, cfg, plan, ctx.task)
    start = time.perf_counter()
    pending = []
    for study in plan:
        done = prev.studies.get(study.name) if prev else None
        if (done is not None and done.status == "ok" and done.config == study.config_dict()
                and not done.missing_figures):  # a study whose figures are lost runs again
            result.studies[study.name] = done
            _say(quiet, f"{study.name}: reused from {out_dir}")
        else:
            pending.append(study)

    def finished(res: StudyResult) -> None:
        if res.name == "clean" and res.status == "failed":
            raise ModelError(f"{adapter.name}: the clean study failed, so no other study can be read: {res.error}")
        result.studies[res.name] = res
        result.seconds = time.perf_counter() - start
        if out_dir is not None:
            save_results(result, out_dir)

    if ray_options is None:
        for study in pending:
            finished(_run_one(study, adapter, dataset, ctx, quiet))
    elif pending:
        _run_on_ray(pending, adapter, dataset, ctx, ray_options, out_dir, fresh, trust_model, finished, quiet)
    result.studies = {s.name: result.studies[s.name] for s in plan}  # audit order
    result.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_results(result, out_dir)
        _write_exports(result, out_dir, plan)
        if report:
            from robustkit.report import render_report

            render_report(result, out_dir / "report.html")
    return result


def _ray_options(cfg: AuditConfig) -> Any:
    """The Ray engine's options, or None for the in-process engine."""
    engine = dict(cfg.engine)
    if engine.pop("name", "inprocess") != "ray":
        if any(v is not None for k, v in engine.items()):
            raise ConfigError(f"The engine options {sorted(engine)} need --engine ray; got the in-process engine.")
        return None
    from robustkit.engines.ray_connect import check_address
    from robustkit.engines.ray_engine import RayOptions, require_ray

    require_ray()
    options = RayOptions(batch_size=cfg.batch_size, **engine)
    options.validate()
    check_address(options.address, timeout=options.connect_timeout)  # before the model and data load
    return options


def _run_on_ray(pending: list[Study], adapter: ModelAdapter, dataset: Dataset, ctx: AuditContext, options: Any,
                out: Path | None, fresh: bool, trust: bool, finished: Any, quiet: bool) -> None:
    from robustkit.engines.ray_engine import SHARDS, run_studies_ray

    if adapter.path is None:
        raise ConfigError("The 'engine' option 'ray' needs a checkpoint path (every worker loads it); "
                          "got an in-memory ModelAdapter.")
    if out is not None and fresh:
        shutil.rmtree(out / SHARDS, ignore_errors=True)
    spec = adapter.load_spec(trust=trust)
    _say(quiet, f"ray: {', '.join(s.name for s in pending)} on {options.workers} worker(s)")
    run_studies_ray(pending, adapter, dataset, ctx, options=options, model_spec=spec, out=out, on_result=finished)
    if out is not None:
        shutil.rmtree(out / SHARDS, ignore_errors=True)  # every study is saved: the shards are spent
def _check_output_kind(adapter: ModelAdapter, output: str | None) -> None:
    """Refuse an output kind an adapter was not built with."""
    if output is not None and output != adapter.output_kind:
        raise ConfigError(f"--output {output}: expected it on the ModelAdapter (ModelAdapter(output=...)) when "
                          f"auditing an adapter, got an adapter of kind {adapter.output_kind!r}.")


def _refuse_load_options(spec: ModelSpec) -> None:
    """An adapter is already loaded: options that say how to load a checkpoint would be ignored."""
    given = [k for k in ("input_scale", "preprocess", "input_mean", "input_std", "channel_order", "model_classes",
                         "input_size") if getattr(spec, k) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: expected them when auditing a checkpoint path, got a loaded "
                          "ModelAdapter (pass them to load_model or ModelAdapter instead).")


def _write_exports(result: AuditResult, out: Path, plan: list[Study] | None = None) -> None:
    """Small files a deployment reads (``temperature.json``), as each study's record declares."""
    from robustkit.plugins import plugin

    studies = {s.name: s for s in plan or []}
    for name, study in result.studies.items():
        record = plugin(name)
        for export in record.exports if record is not None and study.status == "ok" else ():
            obj = (getattr(studies.get(name), export.data_key, None) if export.source == "study"
                   else study.data.get(export.data_key))
            if obj and export.filename.endswith(".npz"):
                buf = io.BytesIO()
                np.savez(buf, **{str(k): np.asarray(v) for k, v in obj.items()})  # type: ignore[arg-type]
                atomic_write_bytes(out / export.filename, buf.getvalue())
            elif obj:
                atomic_write_text(out / export.filename, json.dumps(obj, indent=2) + "\n")


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


def _new_result(model: ModelAdapter, data: Dataset, cfg: AuditConfig, plan: list[Study], task: Task) -> AuditResult:
    return AuditResult(
        model=model.describe(),
        dataset=data.describe(),
        config={
            "seed": cfg.seed,
            "profile": cfg.profile,
            "critical_class": task.critical,
            "limit": cfg.limit,
            "batch_size": model.batch_size,
            "studies": {s.name: s.config_dict() for s in plan},
            "engine": {"name": cfg.engine.get("name", "inprocess"),
                       **{k: v for k, v in cfg.engine.items() if k != "name" and v is not None}},
        },
        environment=_environment(),
        ids=np.asarray(data.ids).astype(str),
        labels=np.asarray(data.labels, dtype=np.int64),
        class_names=list(model.class_names),
        robustkit_version=__version__,
        metadata=data.metadata,
        targets=data.targets if model.output_kind == "multilabel" else None,
        task=task.describe(),
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
