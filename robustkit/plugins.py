"""One registration record per study, readable without TensorFlow.

A study is one :class:`StudyPlugin`: its study class and report view as ``"module:attr"``
strings (imported only when used), its partial template, the record columns that back its
metrics for compare's paired tests, and the small files it exports beside
``results.json``. The runner, the study registry, the report and compare all read this one
table (the timm ``@register_model`` pattern): nothing about a study is kept anywhere else.

Third parties ship a study, with its view and template, through one entry point in the
group ``robustkit.studies`` whose object is a :class:`StudyPlugin` (a bare ``Study``
subclass still works: it gets the generic view). Keep that object in a module that does
not import TensorFlow, so that the report and compare can read it.

Example:
    >>> plugin("clean").view
    'robustkit.report.views:clean_view'
    >>> [e.filename for e in plugin("calibration").exports]
    ['temperature.json']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from robustkit.errors import ConfigError, param_error

__all__ = [
    "BUILTIN_PLUGINS",
    "CardBlock",
    "CardItem",
    "CliOption",
    "ENTRY_POINT_GROUP",
    "EceColumns",
    "Export",
    "FindingColumns",
    "PairedSpec",
    "StudyPlugin",
    "load_attr",
    "plugin",
    "plugins",
    "register_plugin",
]

ENTRY_POINT_GROUP = "robustkit.studies"


@dataclass(frozen=True)
class EceColumns:
    """The record columns an ECE-type metric is recomputed from (equal-width bins).

    Attributes:
        confidence: column ``(n,)`` of top-label confidences.
        correct: column ``(n,)`` or ``(n, 1)`` of 0/1 outcomes.
    """

    confidence: str = "confidence"
    correct: str = "correct"


@dataclass(frozen=True)
class FindingColumns:
    """The record columns behind a multi-label study's per-finding metrics.

    Attributes:
        scores: column ``(n, K)`` of each finding's probability (AUROC, AUPRC; DeLong).
        correct: column ``(n, K)`` of 0/1 "the thresholded call equals the target"
            (sensitivity and specificity; McNemar on the images with / without a finding).
    """

    scores: str = "probs"
    correct: str = "correct"


@dataclass(frozen=True)
class PairedSpec:
    """Which per-sample record columns back which metrics (read by compare).

    Attributes:
        binary: record keys ``key`` holding ``(n, M)`` 0/1 columns whose means are the
            ``M`` metrics named in ``data[key + "_metrics"]`` (accuracies: ``correct``).
        ece: metric name -> the columns its binned ECE is recomputed from; the number of
            bins is the study config's ``n_bins`` (15 when absent).
        subset: ``(column, value)``: only samples whose ``records[column] == value`` count
            for the ECE metrics (calibration's evaluation split), or None for all.
        findings: the per-finding columns of multi-label audits, or None where the study
            has none (its per-finding metrics are then bootstrapped where possible).
    """

    binary: tuple[str, ...] = ("correct",)
    ece: Mapping[str, EceColumns] = field(default_factory=dict)
    subset: tuple[str, int] | None = None
    findings: FindingColumns | None = None


@dataclass(frozen=True)
class Export:
    """A small file written beside ``results.json`` from the study's stored data: JSON, or
    ``.npz`` (numpy arrays) when the file name ends so.

    Attributes:
        filename: file name in the audit folder (``temperature.json``, ``ood_statistics.npz``).
        data_key: key of the study's ``data`` that holds the object, or, with ``source="study"``,
            the attribute the study object set in ``reduce`` (large arrays kept out of
            ``results.json``; a study reused from an earlier run leaves its file as it was).
        source: ``"data"`` or ``"study"``.
    """

    filename: str
    data_key: str
    source: str = "data"


@dataclass(frozen=True)
class CliOption:
    """A command-line shortcut a study owns: ``--flag VALUE`` sets ``<study>.<key>``.

    Attributes:
        flag: the option (``--layer``).
        key: the study config key it sets.
        help: one line for ``robustkit audit --help``.
        is_list: the value is comma-separated (``--layers a,b``).
        repeat: the option may be given several times; the values make a list (``--ood``).
        metavar: how ``--help`` names the value.
        text: the value is a string (a path, a name) as given, never read as a number.
    """

    flag: str
    key: str
    help: str
    is_list: bool = False
    repeat: bool = False
    metavar: str | None = None
    text: bool = True


@dataclass(frozen=True)
class CardItem:
    """A number (or a family of numbers) a study shows on the audit card.

    ``metric`` names a metric of the study; ``label`` is what the card calls it. Both may hold
    fields, filled in from the stored audit when the card is built (:mod:`robustkit.card_blocks`):

    * ``{critical}``: the audit's critical class (the item is left out without one: the
      study's own ``critical class`` check says so);
    * ``{class}``: every output, the critical one first (one number each);
    * ``{data.KEY}`` / ``{config.KEY}``: a value of the study's stored data or config (dotted
      keys reach into tables); the item is left out when it is missing;
    * ``{a|b}``: each of the listed words, in order;
    * ``{#NAME}``: a number (a budget such as ``0.5`` or ``8``); the first item of a block that
      meets it picks the smallest finite one present, and later items of the block reuse it;
    * ``{*}``: any text: every match in stored order, or with ``pick="largest"`` the ``limit``
      largest values (``exclude``: values of ``{*}`` to leave out).

    Attributes:
        metric: the pattern of the metric name within the study.
        label: the card's words for it, with the same fields.
        task: ``"any"``, ``"exclusive"`` (one label per image) or ``"multilabel"``.
        pick: ``"each"`` or ``"largest"`` (for ``{*}``).
        limit: the most numbers the item shows; those left out are counted in a note.
        exclude: values of ``{*}`` never shown by this item.
        fallback: an item tried when this one shows nothing.
    """

    metric: str
    label: str
    task: str = "any"
    pick: str = "each"
    limit: int = 12
    exclude: tuple[str, ...] = ()
    fallback: CardItem | None = None


@dataclass(frozen=True)
class CardBlock:
    """What a study shows on the audit card: its numbers, in the card section they belong to.

    Attributes:
        items: the numbers, in card order.
        section: the card section (``performance``, ``shift``, ...; default: the study's name);
            two studies may share one (perturbation and noise: ``shift``).
        title: the section's heading (default: the study's name).
        checks: how the card counts the study's checks in its note (``"Checks"``); None: no note.
        check_prefix: only checks whose name starts with this are counted.
        no_checks: the note when the study recorded no such check (None: no note).
    """

    items: tuple[CardItem, ...]
    section: str | None = None
    title: str | None = None
    checks: str | None = "Checks"
    check_prefix: str = ""
    no_checks: str | None = None


@dataclass(frozen=True)
class StudyPlugin:
    """Everything robustkit needs to know about one study.

    Attributes:
        name: the study's name (its key in results and metric names).
        study: ``"module:Class"`` of the :class:`robustkit.studies.Study` subclass.
        view: ``"module:function"`` of its report view ``(study, audit) -> dict``, or None
            for the generic view.
        template: its report partial: a name under robustkit's ``templates/``
            (``partials/clean.html.j2``) or ``"package:path/in/package.html.j2"`` for a
            template shipped in another package; None for the generic partial.
        paired: the columns behind its metrics, for compare.
        exports: files written beside ``results.json``.
        options: command-line shortcuts for its config keys (``--layer`` for saliency);
            every study option is also reachable as ``--set STUDY.KEY=VALUE``.
        card: the numbers it shows on the audit card, for every task kind; None: none (the
            card then says the study shows nothing there).
    """

    name: str
    study: str
    view: str | None = None
    template: str | None = None
    paired: PairedSpec = field(default_factory=PairedSpec)
    exports: tuple[Export, ...] = ()
    options: tuple[CliOption, ...] = ()
    card: CardBlock | None = None

    def load_study(self) -> type:
        """Import and return the study class (a bare class from an entry point as it came)."""
        if self.study in _CLASSES:
            return _CLASSES[self.study]
        return load_attr(self.study, what=f"the study class of {self.name!r}")

    def load_view(self) -> Callable[..., dict[str, Any]] | None:
        """Import and return the view function, or None when the study has none."""
        return None if self.view is None else load_attr(self.view, what=f"the report view of {self.name!r}")


def load_attr(ref: str, *, what: str) -> Any:
    """Import ``"module:attr"`` and return the attribute; ConfigError naming ``what`` otherwise."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise param_error(what, "a 'module:attribute' string", ref)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {what}: expected an importable {ref!r}, got {type(exc).__name__}: {exc}") from exc


_CONDITIONS = PairedSpec(binary=("correct", "flipped"), findings=FindingColumns())
_CAL = PairedSpec(
    ece={"ece": EceColumns("confidence"), "ece_ts": EceColumns("confidence_ts")},
    subset=("split", 1),
)

_ANY, _ONE, _MANY = "any", "exclusive", "multilabel"
_LINF, _L2 = " LINF {#linf} /255", " L2 {#l2}"


def _shift_block(kind: str) -> CardBlock:
    """Perturbation and noise: the worst condition and the mean over conditions."""
    return CardBlock(section="shift", title="Acquisition shift", items=(
        CardItem("accuracy.{data.worst_condition}", f"worst {kind}: {{data.worst_condition}}", _ONE,
                 fallback=CardItem("worst_accuracy", f"worst {kind}", _ONE)),
        CardItem("mean_accuracy", f"mean accuracy under {kind}", _ONE),
        CardItem("auroc.macro.{data.worst_condition}", f"worst {kind} (macro AUROC): {{data.worst_condition}}", _MANY,
                 fallback=CardItem("worst_auroc", f"worst {kind} (macro AUROC)", _MANY)),
        CardItem("mean_auroc", f"mean macro AUROC under {kind}", _MANY),
    ))


_CARD_CLEAN = CardBlock(section="performance", title="Performance on the clean test images", items=(
    CardItem("accuracy", "accuracy", _ONE), CardItem("balanced_accuracy", "balanced accuracy", _ONE),
    CardItem("auroc.macro", "ROC AUC (macro)"), CardItem("auroc.micro", "ROC AUC (micro)", _MANY),
    CardItem("auprc.macro", "AUPRC (macro)", _MANY),
    CardItem("auroc.{class}", "AUROC {class}", _MANY), CardItem("sensitivity.{class}", "sensitivity {class}"),
    CardItem("specificity.{class}", "specificity {class}"),
))
_CARD_CALIBRATION = CardBlock(section="calibration", title="Calibration", items=(
    *(CardItem(m, label, _ONE) for m, label in (
        ("ece", "ECE before scaling"), ("ece_ts", "ECE after temperature scaling"), ("brier", "Brier before"),
        ("brier_ts", "Brier after"))),
    *(CardItem(m, label, _MANY) for m, label in (
        ("ece.macro", "ECE (macro) before"), ("ece_ts.macro", "ECE (macro) after scaling"),
        ("brier.macro", "Brier (macro) before"), ("brier_ts.macro", "Brier (macro) after"))),
    CardItem("temperature", "temperature T"),
))
_CARD_ADVERSARIAL = CardBlock(
    section="adversarial", title="Adversarial robustness", checks="Attack honesty checks",
    no_checks="No attack honesty checks were recorded: the robust accuracy is not verified.",
    items=(
        CardItem("flip_off_rate.linf.{#linf}.macro", "present finding turned off (macro over findings)," + _LINF, _MANY),
        CardItem("flip_on_rate.linf.{#linf}.macro", "absent finding turned on (macro over findings)," + _LINF, _MANY),
        CardItem("flip_off_rate.l2.{#l2}.macro", "present finding turned off (macro over findings)," + _L2, _MANY),
        CardItem("flip_on_rate.l2.{#l2}.macro", "absent finding turned on (macro over findings)," + _L2, _MANY),
        CardItem("robust_accuracy.linf.{#linf}", "{config.attack} robust accuracy," + _LINF, _ONE),
        CardItem("robust_accuracy.apgd_ce.linf.{#linf}", "after APGD-CE alone," + _LINF, _ONE),
        CardItem("critical_miss_rate.linf.{#linf}", "{critical} cases turned into another class," + _LINF, _ONE),
        CardItem("robust_accuracy.l2.{#l2}", "{config.attack} robust accuracy," + _L2, _ONE),
        CardItem("robust_accuracy.apgd_ce.l2.{#l2}", "after APGD-CE alone," + _L2, _ONE),
    ))
_CARD_SALIENCY = CardBlock(
    section="saliency", title="Saliency sanity", checks="Weight randomisation sanity", check_prefix="randomisation sanity",
    items=(CardItem("randomization.ssim.{*}", "map similarity after randomisation: {*}"),))
_CARD_SLICES = CardBlock(section="slices", title="Subgroups (slices)", items=(
    CardItem("worst.accuracy", "worst slice accuracy: {data.worst.slice}", _ONE),
    CardItem("worst.auroc", "worst slice macro AUROC: {data.worst.slice}", _MANY),
    CardItem("worst.gap", "worst slice minus the rest"),
    CardItem("n_flagged", "slices significantly worse than the rest"),
    CardItem("probe.auroc.{*}", "site probe AUROC: {*}"),
))
_CARD_OOD = CardBlock(section="ood", title="Out-of-distribution inputs", items=(
    CardItem("auroc.{data.recommended}.{far|near}", "AUROC ({data.recommended}) {far|near}",
             fallback=CardItem("auroc.{data.recommended}.{*}", "AUROC ({data.recommended}) {*}")),
    CardItem("confident_critical_rate.id", "confident {critical} rate id", _ONE),
    CardItem("confident_critical_rate.{*}", "confident {critical} rate {*}", _ONE, pick="largest", limit=3,
             exclude=("id",)),
    CardItem("finding_call_rate.id", "finding call rate id", _MANY),
    CardItem("finding_call_rate.{*}", "finding call rate {*}", _MANY, pick="largest", limit=3, exclude=("id",)),
))

_CARD_SMOOTHING = CardBlock(
    section="certified", title="Certified robustness (randomized smoothing)", items=(
        CardItem("base_accuracy", "base model accuracy on the same images"),
        CardItem("clean_accuracy.{data.card_sigma}", "smoothed accuracy, noise s = {data.card_sigma}"),
        CardItem("certified_accuracy.{data.card_sigma}.{*}", "certified accuracy at L2 radius {*}, s = {data.card_sigma}"),
        CardItem("acr.{data.card_sigma}", "average certified radius, s = {data.card_sigma}"),
        CardItem("abstention_rate.{data.card_sigma}", "abstention rate, s = {data.card_sigma}"),
    ))

#: Built-in studies, in the order an audit runs them.
BUILTIN_PLUGINS: tuple[StudyPlugin, ...] = (
    StudyPlugin("clean", "robustkit.studies.clean:CleanStudy",
                "robustkit.report.views:clean_view", "partials/clean.html.j2",
                paired=PairedSpec(findings=FindingColumns()), card=_CARD_CLEAN),
    StudyPlugin("perturbation", "robustkit.studies.perturbation:PerturbationStudy",
                "robustkit.report.view_perturbation:condition_view", "partials/perturbation.html.j2",
                paired=_CONDITIONS, card=_shift_block("acquisition shift")),
    StudyPlugin("noise", "robustkit.studies.noise:NoiseStudy",
                "robustkit.report.view_perturbation:condition_view", "partials/noise.html.j2",
                paired=_CONDITIONS, card=_shift_block("noise")),
    StudyPlugin("adversarial", "robustkit.studies.adversarial:AdversarialStudy",
                "robustkit.report.view_adversarial:adversarial_view", "partials/adversarial.html.j2",
                card=_CARD_ADVERSARIAL),
    StudyPlugin("calibration", "robustkit.studies.calibration:CalibrationStudy",
                "robustkit.report.view_calibration:calibration_view", "partials/calibration.html.j2",
                paired=_CAL, exports=(Export("temperature.json", "temperature_export"),), card=_CARD_CALIBRATION),
    StudyPlugin("saliency", "robustkit.studies.saliency:SaliencyStudy",
                "robustkit.report.view_saliency:saliency_view", "partials/saliency.html.j2",
                options=(CliOption("--layer", "layer", "saliency: the layer Grad-CAM explains (default: the last "
                                   "4-D feature map)"),
                         CliOption("--layers", "layers", "saliency: comma-separated layers for the activation-map "
                                   "panel", is_list=True)), card=_CARD_SALIENCY),
    StudyPlugin("slices", "robustkit.studies.slices:SlicesStudy",
                "robustkit.report.view_slices:slices_view", "partials/slices.html.j2", card=_CARD_SLICES),
    StudyPlugin("ood", "robustkit.studies.ood:OODStudy", "robustkit.report.view_ood:ood_view",
                "partials/ood.html.j2", paired=PairedSpec(binary=()),
                exports=(Export("ood.json", "ood_export"), Export("ood_statistics.npz", "statistics", source="study")),
                options=(CliOption("--reference-data", "reference_data", "ood: in-distribution reference images "
                                   "(the training set, one folder per class); default: a seeded split of the audit "
                                   "data (weaker)", metavar="DIR"),
                         CliOption("--ood", "ood_dirs", "ood: a folder of images the model should refuse, as set "
                                   "NAME (repeatable)", repeat=True, metavar="NAME=DIR"),
                         CliOption("--features-layer", "features_layer", "ood: the layer whose output is the "
                                   "feature vector (default: the final Dense layer's input)")), card=_CARD_OOD),
    StudyPlugin("smoothing", "robustkit.studies.smoothing:SmoothingStudy",
                "robustkit.report.view_smoothing:smoothing_view", "partials/smoothing.html.j2",
                card=_CARD_SMOOTHING),
)

_PLUGINS: dict[str, StudyPlugin] = {p.name: p for p in BUILTIN_PLUGINS}
_CLASSES: dict[str, type] = {}  # bare Study subclasses from entry points, by their "module:qualname"
_LOADED_ENTRY_POINTS = False


def register_plugin(record: StudyPlugin) -> StudyPlugin:
    """Add (or replace) the record of a study; returns it."""
    if not isinstance(record, StudyPlugin):
        raise param_error("plugin", "a robustkit.plugins.StudyPlugin", type(record).__name__)
    if not record.name:
        raise param_error("plugin.name", "a non-empty study name", record.name)
    _PLUGINS[record.name] = record
    return record


def _from_entry_point(name: str, obj: Any) -> StudyPlugin:
    """A record from an entry point's object: a StudyPlugin, or (older) a Study subclass."""
    if isinstance(obj, StudyPlugin):
        return obj
    study_name = getattr(obj, "name", None) if isinstance(obj, type) else None
    if isinstance(obj, type) and study_name:
        ref = f"{obj.__module__}:{obj.__qualname__}"
        _CLASSES[ref] = obj
        return StudyPlugin(str(study_name), ref)
    raise param_error(f"entry point {name!r} of group {ENTRY_POINT_GROUP!r}",
                      "a StudyPlugin record or a Study subclass", type(obj).__name__)


def _load_entry_points() -> None:
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _PLUGINS:
            record = _from_entry_point(ep.name, ep.load())
            _PLUGINS.setdefault(record.name, record)


def plugins() -> dict[str, StudyPlugin]:
    """Every known record (built-ins first in audit order, then plug-ins), by name."""
    _load_entry_points()
    return dict(_PLUGINS)


def plugin(name: str) -> StudyPlugin | None:
    """The record of study ``name``, or None when no such study is known."""
    if name not in _PLUGINS:
        _load_entry_points()
    return _PLUGINS.get(name)
