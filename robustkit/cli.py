"""The ``robustkit`` command: a thin layer over the public API.

Every command has ``--help``. Input errors print one line ``robustkit: error: ...`` and
exit with code 2; a command that ran but found a failure (a failed study) exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustkit import __version__
from robustkit.errors import RobustkitError

__all__ = ["main"]

_DEMO_OUT = Path("reports") / "demo"


_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                     help="no progress bars or chatter (for CI)")


def _studies_arg(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _add_class_options(p: argparse.ArgumentParser, *, masks: bool = True) -> None:
    """--class-map, --exclude-class, --merge-classes (audit and train) and --masks (audit)."""
    p.add_argument("--class-map", dest="class_map", action="append", default=None, metavar="DATA=MODEL",
                   help="rename a data class to the model's name, e.g. --class-map COVID=COVID-19 "
                   "(repeatable; added to the config's [classes] table)")
    p.add_argument("--exclude-class", dest="exclude_classes", action="append", default=None,
                   metavar="CLASS", help="set a data class aside as out of scope, e.g. "
                   "--exclude-class Lung_Opacity (repeatable; counted in results.json and the report)")
    p.add_argument("--merge-classes", action="store_true", default=None,
                   help="allow --class-map to send two data classes to one model class")
    if not masks:
        return
    p.add_argument("--masks", choices=["lesion", "lung", "none"], default=None,
                   help="what the data's masks/ files are: lesion masks (default), lung-field "
                   "masks (the COVID-19 Radiography Database) or none (ignored)")


def _class_map(a: argparse.Namespace) -> dict[str, str] | None:
    from robustkit.data.classes import parse_class_map

    return parse_class_map(a.class_map) if a.class_map else None


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        parents=[_COMMON],
        help="write a procedural chest X-ray phantom dataset",
        description="Write a folder-per-class chest X-ray phantom (COVID-19/, NORMAL/, Viral Pneumonia/) "
        "with a masks/ tree of lesion masks and a lung_masks/ tree of lung-field masks. "
        "Deterministic by seed.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shortcut", action="store_true",
                   help="burn a text marker that correlates with the class into each image")
    p.add_argument("--sites", type=int, default=0,
                   help="acquisition sites (0-8): per-case site, view, sex, age in <class>.metadata.csv and "
                   "manifest.csv; each site has its own exposure, noise, collimation and burned-in label")
    p.add_argument("--confounded", action="store_true",
                   help="with --sites: class prevalence differs strongly by site (a learnable shortcut)")
    p.add_argument("--multilabel", action="store_true",
                   help="co-occurring findings (Effusion, Infiltration, Opacity) instead of classes: 4 x --per-class "
                   "images in images/, a mask per finding in masks/<finding>/ and manifest.csv "
                   "(label 'Effusion|Opacity' or 'No Finding', columns mask.<finding>)")
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(a: argparse.Namespace) -> int:
    from robustkit.data.phantom import generate_phantom

    out = generate_phantom(a.out, per_class=a.per_class, size=a.size, seed=a.seed,
                           shortcut=a.shortcut, progress=not a.quiet, sites=a.sites, confounded=a.confounded,
                           multilabel=a.multilabel)
    print(out)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        parents=[_COMMON],
        help="train a classifier with the original recipe",
        description="Train InceptionV3 (or a small CNN) on a folder-per-class dataset with the original "
        "recipe; keeps the best checkpoint by validation loss and writes the history JSON and plot "
        "beside it.",
    )
    p.add_argument("--data", required=True, type=Path, help="folder-per-class dataset or CSV manifest")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.keras)")
    p.add_argument("--arch", default="inception_v3", help="inception_v3 (default) or small_cnn")
    p.add_argument("--input-size", type=int, default=256, help="input side in pixels (default 256)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--weights", default="none",
                   help="imagenet (Keras's cached weights only), none (from scratch, default) or PATH")
    p.add_argument("--learning-rate", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train without the recipe's augmentation (rotation, shifts, zoom)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--multilabel", action="store_true",
                   help="a sigmoid head fitted with binary cross-entropy to the findings of a multi-label "
                   "manifest (several findings per image); the sidecar records output multilabel")
    p.add_argument("--noise-sigma", type=float, default=0.0, metavar="S",
                   help="Gaussian noise augmentation with standard deviation S in [0, 1] pixel units (Cohen et "
                   "al. 2019), for a model the smoothing study can certify; the sidecar records it (default 0)")
    _add_class_options(p, masks=False)
    p.set_defaults(func=_cmd_train)


def _cmd_train(a: argparse.Namespace) -> int:
    from robustkit.model.training import train

    res = train(a.data, a.out, arch=a.arch, input_size=a.input_size, epochs=a.epochs,
                batch_size=a.batch_size, weights=a.weights, seed=a.seed,
                learning_rate=a.learning_rate, augment=a.augment, quiet=a.quiet,
                class_map=_class_map(a), exclude_classes=a.exclude_classes or (),
                merge_classes=bool(a.merge_classes), multilabel=a.multilabel, noise_sigma=a.noise_sigma)
    print(res.checkpoint)
    return 0


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["quick", "standard", "full"], default=None,
                   help="study settings: quick, standard (default) or full")
    p.add_argument("--studies", type=_studies_arg, default=None,
                   help="comma-separated study names (default: every available study)")
    p.add_argument("--config", type=Path, default=None, help="audit config (TOML)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice (default 0)")
    p.add_argument("--limit", type=int, default=None, help="audit a stratified subsample of N images")
    p.add_argument("--batch-size", type=int, default=None, help="images per model call")
    p.add_argument("--fresh", action="store_true", help="ignore finished studies in --out and start over")
    p.add_argument("--on-bad-input", choices=["fail", "skip"], default="fail",
                   help="unreadable images: stop (default) or skip and list them")
    p.add_argument("--strict-metadata", action="store_true", default=None,
                   help="stop on an image without a row in its class's <class>.metadata.xlsx/.csv sheet "
                   "(default: its metadata value is 'missing', counted in results.json, the report and the card)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow checkpoints with serialized code (Lambda layers); off by default")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="STUDY.KEY=VALUE",
                   help="override one study option, e.g. --set noise.max_samples=50 or "
                   "--set perturbation.severities=[1,3,5] (TOML values; repeatable)")
    _add_study_options(p)
    _add_class_options(p)


def _add_study_options(p: argparse.ArgumentParser) -> None:
    """The shortcuts that studies declare in their plug-in records (``--layer`` for saliency)."""
    from robustkit.plugins import plugins

    for record in plugins().values():
        for opt in record.options:
            p.add_argument(opt.flag, dest=_option_dest(record.name, opt.key), default=None, help=opt.help,
                           type=_studies_arg if opt.is_list else str, metavar=opt.metavar or opt.key.upper(),
                           action="append" if opt.repeat else "store")


def _option_dest(study: str, key: str) -> str:
    return f"study_option__{study}__{key}"


def _study_settings(a: argparse.Namespace) -> list[str]:
    """``--set`` lines for the study shortcuts given on the command line."""
    from robustkit.plugins import plugins

    text = {_option_dest(r.name, o.key): o.text for r in plugins().values() for o in r.options}
    out = []
    for dest, value in vars(a).items():
        if dest.startswith("study_option__") and value is not None:
            _, study, key = dest.split("__", 2)
            literal = json.dumps(value) if isinstance(value, list) or text.get(dest, True) else str(value)
            out.append(f"{study}.{key}={literal}")  # a TOML value (JSON strings and lists are TOML)
    return out


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        parents=[_COMMON],
        help="audit a checkpoint on a dataset",
        description="Run the studies on a checkpoint and a dataset and write results.json, records.npz "
        "and report.html into --out. Re-running into the same folder resumes: finished studies "
        "with unchanged model, data and config are reused.",
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint (.keras, .h5, .hdf5, SavedModel)")
    _add_model_setup(p)
    p.add_argument("--output", choices=["softmax", "sigmoid", "multilabel", "logits"], default=None,
                   help="the model's output kind (default: its .meta.json, else detected from the final layer: "
                   "softmax, sigmoid (one class per image, scored one-vs-rest) or logits; a sigmoid head on a "
                   "multi-label manifest is audited as multilabel: several findings per image)")
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label audits: the decision threshold in (0, 1) of every finding (default: chosen "
                   "per finding by Youden's J on a calibration half of the images, read on the other half)")
    p.add_argument("--critical-class", default=None, metavar="NAME",
                   help="the output whose misses cost most (the demo: COVID-19); it names the critical miss "
                   "rate under attack, the confident critical rate on OOD sets and the sensitivity read among "
                   "kept cases and per slice (default: the config's critical_class, else none: those numbers "
                   "are not measured and a check says so)")
    p.add_argument("--data", required=True, type=Path, help="folder-per-class dataset or CSV manifest")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--ce-reference", type=Path, default=None, metavar="AUDIT_DIR",
                   help="the audit of a reference model, whose errors normalise the corruption error (CE, mCE) of "
                   "perturbation and noise (not the OOD study's in-distribution --reference-data)")
    _add_audit_options(p)
    _add_engine_options(p)
    _add_registry_options(p, what="log the finished audit as one MLflow run (as robustkit log)")
    p.set_defaults(func=_cmd_audit)


def _add_mlflow_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                   help=f"{what}; the server is TRACKING_URI, else MLFLOW_TRACKING_URI, else MLflow's default "
                   "(pip install \"robustkit[mlflow]\")")


def _add_registry_options(p: argparse.ArgumentParser, *, what: str) -> None:
    g = p.add_argument_group("model registry", "MLflow tracking and registry (pip install \"robustkit[mlflow]\")")
    _add_mlflow_option(g, what)  # type: ignore[arg-type]
    g.add_argument("--experiment", default="robustkit", help="MLflow experiment of the run (default robustkit)")
    g.add_argument("--registered-model", default=None, metavar="NAME",
                   help="link the run to this registered model's --version (a robustkit.audit_run tag on the version)")
    g.add_argument("--version", dest="model_version", default=None, metavar="V",
                   help="the registered model version the audit belongs to (with --registered-model)")


def _tracking_uri(a: argparse.Namespace) -> str | None:
    return getattr(a, "mlflow", None) or None


def _log_run(a: argparse.Namespace, folder: Path) -> None:
    from robustkit.registry import log_audit

    run = log_audit(folder, tracking_uri=_tracking_uri(a), experiment=a.experiment,
                    registered_model=a.registered_model, version=a.model_version)
    link = f", linked to {run.model_version[0]} version {run.model_version[1]}" if run.model_version else ""
    print(f"logged {folder} to run {run.run_id} ({run.metrics} metrics, {len(run.artifacts)} artifacts) on "
          f"{run.tracking_uri}{link}", file=sys.stderr)


def _baseline(a: argparse.Namespace, value: str | None) -> Path | None:
    """A --baseline folder, or the audit an ``mlflow:`` URI names, fetched into the cache."""
    from robustkit.registry.baseline import is_registry_uri, resolve_baseline

    if value is None or not is_registry_uri(value):
        return None if value is None else Path(value)
    return resolve_baseline(value, tracking_uri=_tracking_uri(a))


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine", "where the studies run (the numbers are the same)")
    g.add_argument("--engine", choices=["inprocess", "ray"], default=None,
                   help="inprocess (default) or ray: an actor pool on a Ray cluster (pip install \"robustkit[ray]\")")
    g.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join (default: RAY_ADDRESS, else a local instance on this machine's CPUs)")
    g.add_argument("--ray-connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on --ray-address (or RAY_ADDRESS) after this many seconds with one line (default 30)")
    g.add_argument("--workers", type=int, default=None, help="Ray actors, each with a copy of the model (default 1)")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per Ray actor (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray actor (default 0)")


def _add_model_setup(p: argparse.ArgumentParser) -> None:
    """How a checkpoint from elsewhere is read: its preprocessing, class order and input size."""
    g = p.add_argument_group("model setup (default: the checkpoint's .meta.json; what is assumed is stated)")
    g.add_argument("--preprocess", choices=["unit", "255", "tf", "torch", "caffe"], default=None,
                   help="what the model's input expects, applied inside the graph (studies stay in [0, 1] pixels): "
                   "unit [0, 1]; 255 [0, 255]; tf [-1, 1]; torch (x - ImageNet mean) / std; caffe BGR, x*255 - "
                   "ImageNet BGR mean (keras.applications' preprocess_input modes; default: unit, stated as assumed)")
    g.add_argument("--input-scale", choices=["unit", "255", "symmetric"], default=None,
                   help="older name of --preprocess unit, 255 and tf (symmetric)")
    g.add_argument("--input-mean", default=None, metavar="R,G,B",
                   help="per-channel mean subtracted (in the units of --preprocess unit or 255), for a "
                   "normalisation no preset matches")
    g.add_argument("--input-std", default=None, metavar="R,G,B", help="per-channel divisor, with --input-mean")
    g.add_argument("--channel-order", choices=["rgb", "bgr", "gray"], default=None,
                   help="the model's channel order (default: the preset's, else rgb; gray for a one-channel model)")
    g.add_argument("--model-classes", default=None, type=_studies_arg, metavar="A,B,C",
                   help="the names of the model's outputs, in order (default: its .meta.json, else the data's "
                   "class names, stated as assumed)")
    g.add_argument("--input-size", default=None, type=_size_arg, metavar="H,W",
                   help="audit a model built without a fixed input size at H x W")
    g.add_argument("--no-input-probe", dest="input_probe", action="store_false", default=None,
                   help="skip the input probe (64 images scored under the declared setup and every preset before "
                   "any study; a clearly better setup stops the audit and names its flags)")


def _size_arg(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return int(parts[0]), int(parts[1])


def _cmd_audit(a: argparse.Namespace) -> int:
    from robustkit.config import DataIntake, EngineSpec
    from robustkit.runner import audit

    result = audit(a.model, a.data, studies=a.studies, profile=a.profile, seed=a.seed,
                   config=_config_with_settings(a), out=a.out, limit=a.limit, batch_size=a.batch_size, fresh=a.fresh,
                   quiet=a.quiet, reference=a.ce_reference, critical_class=a.critical_class,
                   model_spec=_model_spec(a, threshold=a.threshold),
                   intake=DataIntake(class_map=_class_map(a), exclude_classes=a.exclude_classes,
                                     merge_classes=a.merge_classes, masks=a.masks, on_bad_input=a.on_bad_input,
                                     strict_metadata=a.strict_metadata),
                   engine=EngineSpec(name=a.engine, ray_address=a.ray_address, workers=a.workers,
                                     cpus_per_worker=a.cpus_per_worker, gpus_per_worker=a.gpus_per_worker,
                                     ray_connect_timeout=a.ray_connect_timeout))
    code = _finish(result, a.out)
    if a.mlflow is not None:
        _log_run(a, a.out)
    return code


def _model_spec(a: argparse.Namespace, *, threshold: float | None = None) -> Any:
    """The ModelSpec of the model-setup options."""
    from robustkit.config import ModelSpec

    return ModelSpec(trust_model=a.trust_model, input_scale=a.input_scale, output=getattr(a, "output", None),
                     threshold=threshold, preprocess=a.preprocess, input_mean=a.input_mean, input_std=a.input_std,
                     channel_order=a.channel_order, model_classes=a.model_classes, input_size=a.input_size,
                     input_probe=a.input_probe)


def _add_log(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "log",
        parents=[_COMMON],
        help="log an audit folder to MLflow (one run; params, metrics, artifacts, registry link)",
        description="Log AUDIT_DIR as one new MLflow run: params (profile, seed, studies, fingerprints, versions, "
        "engine), every flat metric of results.json (names MLflow refuses are mapped as the README says; "
        "intervals as <name>.ci_low/.ci_high), tags (model, output kind, worst check) and the audit's files as "
        "artifacts under audit/. With --registered-model NAME --version V the run and that model version "
        "name each other. Writes AUDIT_DIR/mlflow.json naming the run.",
    )
    p.add_argument("dir", type=Path, metavar="AUDIT_DIR", help="audit folder")
    _add_registry_options(p, what="the tracking server")
    p.set_defaults(func=_cmd_log)


def _cmd_log(a: argparse.Namespace) -> int:
    _log_run(a, a.dir)
    return 0


def _add_history(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history",
        parents=[_COMMON],
        help="chosen metrics over a registered model's audited versions (history.html)",
        description="Draw each chosen metric with its 95%% interval over the versions of a registered model that "
        "have an audit (logged with robustkit log --registered-model), and mark the versions whose paired "
        "comparison with the previous version (logged by gate --mlflow --baseline) found a significant change; "
        "versions without one say 'not tested'. Writes OUT/history.html (no script).",
    )
    p.add_argument("model", metavar="mlflow:models:/NAME", help="the registered model")
    p.add_argument("--metrics", nargs="+", default=None, metavar="PATTERN",
                   help="metric names or fnmatch patterns (default: clean.accuracy, clean.auroc.macro, "
                   "clean.sensitivity.*, calibration.ece, those present)")
    p.add_argument("--out", required=True, type=Path, help="output folder for history.html")
    _add_mlflow_option(p, "the tracking server")
    p.set_defaults(func=_cmd_history)


def _cmd_history(a: argparse.Namespace) -> int:
    from robustkit.registry import history

    print(history(a.model, out=a.out, metrics=a.metrics, tracking_uri=_tracking_uri(a)))
    return 0


def _config_with_settings(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The --config file (or defaults) plus --set and the studies' own shortcuts (``--layer``)."""
    import dataclasses

    from robustkit.config import load_config, parse_setting

    cfg = load_config(a.config)
    settings = list(a.settings) + _study_settings(a)
    overrides = {k: dict(v) for k, v in cfg.overrides.items()}
    for text in settings:
        study, key, value = parse_setting(text)
        overrides.setdefault(study, {})[key] = value
    return dataclasses.replace(cfg, overrides=overrides)


def _finish(result, out: Path) -> int:  # type: ignore[no-untyped-def]
    failed = [n for n, s in result.studies.items() if s.status != "ok"]
    for name, check in result.checks():
        if check.status != "pass":
            print(f"[{check.status}] {name}: {check.name}: {check.detail}", file=sys.stderr)
    clean = result.studies["clean"].metrics
    if "accuracy" in clean:  # one label per image
        print(f"clean accuracy {clean['accuracy']:.4f} on {len(result.ids)} images", file=sys.stderr)
    elif "auroc.macro" in clean:  # a multi-label audit: no accuracy over an arg-max
        print(f"clean macro AUROC {clean['auroc.macro']:.4f} over {len(result.class_names)} findings on "
              f"{len(result.ids)} images", file=sys.stderr)
    print(out / "report.html")
    if failed:
        print(f"robustkit: studies failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        parents=[_COMMON],
        help="re-render the HTML report of an audit folder",
        description="Re-render DIR/report.html from DIR/results.json, DIR/records.npz and DIR/figures.npz alone "
        "(no model is loaded and TensorFlow is not imported; without figures.npz the figures are noted as missing).",
    )
    p.add_argument("dir", type=Path, help="audit folder")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default DIR/report.html)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(a: argparse.Namespace) -> int:
    from robustkit.report import render_report

    print(render_report(a.dir, a.out))
    return 0


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "card",
        parents=[_COMMON],
        help="write the one-page audit card (card.html) and its JSON/YAML exports",
        description="Write DIR/card.html, the one-page summary a reviewer signs (model, intended use, data, "
        "acceptance rules judged on the 95%% interval's bound, per-class sensitivity and specificity, "
        "robustness, changes against a baseline, limitations), and beside it card.json, "
        "card.model_card.json (Model Card Toolkit) and card.model-index.yaml (Hugging Face). "
        "Reads results.json and records.npz alone (no TensorFlow; figures.npz is not needed).",
    )
    p.add_argument("dir", type=Path, metavar="AUDIT_DIR", help="audit folder")
    p.add_argument("--policy", type=Path, default=None, help="gate policy (TOML) for the acceptance table")
    p.add_argument("--baseline", default=None, metavar="DIR|mlflow:URI",
                   help="audit folder of the released checkpoint, or mlflow:models:/NAME@ALIAS or mlflow:runs:/RUN_ID")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default AUDIT_DIR/card.html)")
    p.add_argument("--intended-use", type=Path, default=None, metavar="FILE.md",
                   help="text or Markdown file: intended use and out-of-scope inputs")
    p.set_defaults(func=_cmd_card)


def _cmd_card(a: argparse.Namespace) -> int:
    from robustkit.card_export import write_card

    paths = write_card(a.dir, out=a.out, policy=a.policy, baseline=_baseline(a, a.baseline), intended_use=a.intended_use)
    print(paths["html"])
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        parents=[_COMMON],
        help="the whole job on the embedded phantom: data, InceptionV3, audit, report",
        description="Generate the phantom chest X-ray data, train (or reuse a cached) InceptionV3 "
        "checkpoint from scratch, audit it with every available study, and print the report's path.",
    )
    p.add_argument("--out", type=Path, default=_DEMO_OUT, help=f"report folder (default {_DEMO_OUT})")
    p.add_argument("--cache", type=Path, default=Path("data") / "generated",
                   help="where phantom data and the checkpoint are cached (default data/generated)")
    p.add_argument("--profile", choices=["quick", "standard", "full"], default="standard",
                   help="study settings (default standard)")
    p.add_argument("--retrain", action="store_true", help="train again even if a cached checkpoint exists")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a: argparse.Namespace) -> int:
    from robustkit.demo import run_demo

    result = run_demo(out=a.out, cache=a.cache, profile=a.profile, retrain=a.retrain, seed=a.seed, quiet=a.quiet)
    return _finish(result, a.out)


def _add_studies(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "studies",
        parents=[_COMMON],
        help="list the available studies, their options, profiles and metrics",
        description="List every available study with its config options (and their values in each "
        "profile) and every metric it reports, with its meaning and direction.",
    )
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (as in the README)")
    p.set_defaults(func=_cmd_studies)


def _cmd_studies(a: argparse.Namespace) -> int:
    from robustkit.studies.catalog import describe_studies

    print(describe_studies(markdown=a.markdown))
    return 0


# ---------------------------------------------------------------- compare and gate

_COMPARE_HELP = """\
Compare audits of the same dataset metric by metric. The first DIR is the baseline; every
other DIR is compared with it. Samples are paired by id: accuracy-type metrics get an exact
McNemar test on the discordant pairs, other metrics a paired bootstrap of the difference
where the per-sample records recompute them, and the rest are reported as "not testable".
Multi-label audits are compared per finding: DeLong's test for clean.auroc.<finding>,
exact McNemar on the thresholded calls for sensitivity/specificity.<finding>, the paired
bootstrap for AUPRC and the macro/micro means.
p-values are Holm-adjusted over the tested metrics of each candidate (--correction none to
turn that off). Writes OUT/compare.json and OUT/compare.html.

Audits of different datasets (fingerprint or sample ids), different major schema versions,
or different seeds/study configs are refused (exit 2); --allow-config-mismatch accepts the
last case and the report states it."""


def _add_compare(sub: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``sub`` (its handler is ``args.func``)."""
    p = sub.add_parser("compare", parents=list(parents), help="compare audits with paired tests (compare.json, compare.html)",
                       description=_COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="audit folders (or mlflow:models:/NAME@ALIAS, mlflow:runs:/RUN_ID); the first is the baseline "
                   "(at least two)")
    p.add_argument("--out", required=True, type=Path, help="output folder for compare.json and compare.html")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--correction", choices=["holm", "none"], default="holm",
                   help="multiple-testing correction over each candidate's metrics (default holm)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--allow-config-mismatch", action="store_true",
                   help="compare audits whose seeds or study configs differ (the report says so)")
    p.set_defaults(func=_cmd_compare)
    return p


def _cmd_compare(a: argparse.Namespace) -> int:
    from robustkit.compare import compare, save_comparison
    from robustkit.errors import param_error
    from robustkit.report.compare_render import render_comparison

    if len(a.dirs) < 2:
        raise param_error("DIR", "at least two audit folders (baseline first)", [str(d) for d in a.dirs])
    dirs = [Path(_baseline(a, d) or d) for d in a.dirs]
    cmp = compare(dirs, alpha=a.alpha, allow_config_mismatch=a.allow_config_mismatch,
                  correction=a.correction, n_boot=a.n_boot, seed=a.seed)
    save_comparison(cmp, a.out)
    html = render_comparison(cmp, a.out)
    for c in cmp.candidates:
        counts = ", ".join(f"{n} {v}" for v, n in c.counts().items())
        print(f"{c.label} vs {cmp.baseline_label}: {counts}", file=sys.stderr)
    print(html)
    return 0


_GATE_HELP = """\
Check an audit against a policy file (TOML) of rules on dotted metric names and exit
0 when no rule fails, 1 when a rule fails, 2 for a usage or input error. The card
(robustkit card --policy) judges the same policy with the same code.

  judge = "bound"                      # default: min/max judged on the 95% interval's
                                       # bound; "point": on the point estimate
  [[rule]]
  metric = "clean.accuracy"            # full dotted name; fnmatch wildcards (* ? [..])
  min = 0.90                           # lower bound >= 0.90 (and/or max: upper bound <=)
  [[rule]]
  metric = "perturbation.accuracy.*.5" # every matching metric must hold
  min = 0.30
  judge = "point"                      # per-rule override
  [[rule]]
  metric = "clean.sensitivity.COVID-19"
  noninferior = 0.02                   # needs --baseline: pass only when the one-sided
                                       # 95% upper bound of the drop is below 0.02
                                       # (Tango score interval / paired bootstrap, Holm)
  [[rule]]
  metric = "clean.accuracy"
  max_drop = 0.01                      # lenient: fails only on a significant drop > 0.01

  [[rule]]
  metric = "clean.auroc.Pleural Effusion" # multi-label: a finding's name as it is,
  min = 0.80                              # spaces included

Optional per rule: name, description, judge; optional top-level: alpha (default 0.05),
judge. Without --baseline, max_drop and noninferior rules are SKIPPED (exit 0 unless
another rule fails; --require-baseline makes them fail). A rule naming a metric the
audit lacks, a wildcard matching nothing, or a metric without an interval under
judge = "bound" is an error (exit 2), never a pass. --junit writes one <testcase> per
rule (<failure> / <skipped>)."""


def _add_gate(sub: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add the ``gate`` subcommand to ``sub`` (its handler is ``args.func``)."""
    p = sub.add_parser("gate", parents=list(parents), help="check an audit against a policy file; exit 0/1/2 for CI",
                       description=_GATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="DIR", help="audit folder of the checkpoint to gate")
    p.add_argument("--policy", required=True, type=Path, help="policy file (TOML), e.g. data/policy.toml")
    p.add_argument("--baseline", default=None, metavar="DIR|mlflow:URI",
                   help="baseline audit folder, or mlflow:models:/NAME@ALIAS or mlflow:runs:/RUN_ID (for max_drop "
                   "and noninferior rules)")
    p.add_argument("--require-baseline", action="store_true",
                   help="fail (exit 1) the rules that need a baseline when none is given, instead of skipping them")
    p.add_argument("--junit", type=Path, default=None, help="write JUnit XML here (one test case per rule)")
    p.add_argument("--format", choices=["text", "github"], default="text", dest="output_format",
                   help="text (default) or github: also print ::error/::notice workflow annotations")
    p.add_argument("--allow-config-mismatch", action="store_true",
                   help="accept a baseline audited with other seeds or study configs")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default 0)")
    _add_mlflow_option(p, "log the outcome (and the comparison with --baseline) to DIR's run, set its robustkit.gate "
                       "tag; never moves an alias")
    p.set_defaults(func=_cmd_gate)
    return p


def _cmd_gate(a: argparse.Namespace) -> int:
    from robustkit.errors import check_choice
    from robustkit.gate import gate, github_error
    from robustkit.results import atomic_write_text

    check_choice("format", a.output_format, ("text", "github"))
    try:
        baseline = _baseline(a, a.baseline)
        report = gate(a.dir, a.policy, baseline=baseline, require_baseline=a.require_baseline,
                      allow_config_mismatch=a.allow_config_mismatch, seed=a.seed)
    except Exception as exc:
        if a.output_format == "github":
            print(github_error("robustkit gate: input error", str(exc)))
        raise
    if a.junit is not None:
        atomic_write_text(a.junit, report.junit())
    print(report.text())
    if a.output_format == "github":
        print(report.github())
    if a.mlflow is not None:
        from robustkit.registry import log_gate

        run_id = log_gate(report, a.dir, baseline=baseline, tracking_uri=_tracking_uri(a),
                          allow_config_mismatch=a.allow_config_mismatch, seed=a.seed)
        print(f"logged the gate's outcome to run {run_id}", file=sys.stderr)
    return report.exit_code


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[_COMMON],
        help="what robustkit reads from a checkpoint: input, output kind, preprocessing layers, Grad-CAM layer",
        description="Show a checkpoint as robustkit will read it: input shape and channels, output kind with its "
        "reason, the final layer, preprocessing layers inside the model, layers that need --trust-model, the "
        "Grad-CAM layer saliency picks, the sidecar and the declared setup; with --data, the input probe's "
        "table (the declared setup and every preprocessing preset scored on 64 probe images, with the class "
        "order the probe supports best).",
    )
    p.add_argument("model", type=Path, help="checkpoint (.keras, .h5, .hdf5, SavedModel)")
    p.add_argument("--data", type=Path, default=None, help="a dataset folder or manifest: adds the input probe")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--seed", type=int, default=0, help="the probe's seed (default 0)")
    p.add_argument("--trust-model", action="store_true", help="allow checkpoints with serialized code")
    p.add_argument("--output", choices=["softmax", "sigmoid", "multilabel", "logits"], default=None,
                   help="the model's output kind (default: detected)")
    _add_model_setup(p)
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(a: argparse.Namespace) -> int:
    from robustkit.errors import ConfigError
    from robustkit.inspection import format_inspection, inspect_model

    if not a.model.exists():
        raise ConfigError(f"{a.model}: expected a model checkpoint, got no such file.")
    options = {"preprocess": a.preprocess, "input_scale": a.input_scale, "input_mean": a.input_mean,
               "input_std": a.input_std, "channel_order": a.channel_order, "class_names": a.model_classes,
               "input_size": a.input_size, "output": a.output}
    report = inspect_model(a.model, data=a.data, trust=a.trust_model, seed=a.seed,
                           model_options={k: v for k, v in options.items() if v is not None})
    print(json.dumps(report, indent=2, default=str) if a.json else format_inspection(report))
    return 0 if report.get("loaded") else 2


_COMMANDS: list[Callable[[argparse._SubParsersAction], object]] = [
    _add_demo, _add_phantom, _add_train, _add_audit, _add_report, _add_card,
    lambda sub: _add_compare(sub, parents=[_COMMON]),
    lambda sub: _add_gate(sub, parents=[_COMMON]),
    _add_log, _add_history, _add_studies, _add_inspect,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustkit",
        description="Audit trained Keras image classifiers (chest X-ray first) for robustness and reliability.",
    )
    parser.add_argument("--version", action="version", version=f"robustkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter (for CI)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except RobustkitError as exc:
        print(f"robustkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("robustkit: interrupted; finished studies are kept in the output folder.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
