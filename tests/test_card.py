"""The audit card: numbers traceable to results.json, bounds judged on intervals, exports valid, inert."""

from __future__ import annotations

import json
import math
import re
from html import unescape
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from robustkit.card import build_card
from robustkit.card_export import card_html, card_json, mct_json, model_index_yaml, write_card
from robustkit.cli import main
from robustkit.judge import judge_threshold
from robustkit.metrics import classification as M
from robustkit.metrics.decisions import counts_from_confusion, decision_scores
from robustkit.results import AuditResult, Check, StudyResult, load_results, save_results

CLASSES = ["NORMAL", "COVID-19", "Viral Pneumonia"]  # COVID-19 not first: as the critical class the card puts it first
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "robustkit" / "schema" / "card.schema.json").read_text())
MCT_SCHEMA = json.loads((REPO / "tests" / "data" / "mct" / "model_card.schema.v0.0.2.json").read_text())


def _clean(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> StudyResult:
    cm = M.confusion_matrix(y, pred, len(classes))
    rates = decision_scores(counts_from_confusion(cm))
    recall = rates["sensitivity"]
    metrics = {"accuracy": M.accuracy(y, pred), "balanced_accuracy": float(recall.mean())}
    intervals = {"accuracy": [metrics["accuracy"] - 0.05, metrics["accuracy"] + 0.04]}
    for c, r, sp in zip(classes, recall, rates["specificity"]):
        metrics[f"sensitivity.{c}"], metrics[f"specificity.{c}"] = float(r), float(sp)
        intervals[f"sensitivity.{c}"] = [float(r) - 0.1, min(1.0, float(r) + 0.05)]
        intervals[f"specificity.{c}"] = [float(sp) - 0.05, min(1.0, float(sp) + 0.03)]
    return StudyResult(name="clean", metrics=metrics, intervals=intervals,
                       directions={"accuracy": "higher", "balanced_accuracy": "higher", "sensitivity": "higher",
                                   "specificity": "higher"},
                       data={"confusion": cm.tolist(), "correct_metrics": ["accuracy"]},
                       checks=[Check("per-class support", "warn", "fewer than 30 images for NORMAL (20).")],
                       records={"pred": pred.astype(np.int16), "correct": (pred == y)[:, None],
                                "index": np.arange(len(y))})


def _others() -> list[StudyResult]:
    return [
        StudyResult(name="calibration", metrics={"ece": 0.081, "ece_ts": 0.032, "temperature": 1.7},
                    intervals={"ece": [0.05, 0.11], "ece_ts": [0.02, 0.05]},
                    directions={"ece": "lower", "ece_ts": "lower", "temperature": "none"}),
        StudyResult(name="perturbation", metrics={"accuracy.jpeg.5": 0.61, "accuracy.rotation.1": 0.9,
                                                  "worst_accuracy": 0.61, "mean_accuracy": 0.8},
                    intervals={"accuracy.jpeg.5": [0.5, 0.7]}, directions={"accuracy": "higher", "worst_accuracy": "higher",
                                                                             "mean_accuracy": "higher"},
                    data={"worst_condition": "jpeg.5"}),
        StudyResult(name="adversarial", metrics={"robust_accuracy.linf.2": 0.3, "robust_accuracy.linf.0.5": 0.7,
                                                 "robust_accuracy.fgsm.linf.0.5": 0.8, "robust_accuracy.l2.0.25": 0.6},
                    intervals={"robust_accuracy.linf.0.5": [0.6, 0.8]}, directions={"robust_accuracy": "higher"},
                    checks=[Check("near zero at a large epsilon", "pass", "ok"),
                            Check("loss rises and flattens", "warn", "only 5 steps: too few to judge convergence.")]),
        StudyResult(name="saliency", metrics={"randomization.ssim.gradcam": 0.2, "randomization.ssim.vanilla_gradient": 0.7},
                    directions={"randomization": "lower"},
                    checks=[Check("randomisation sanity: gradcam", "pass", "ok"),
                            Check("randomisation sanity: vanilla_gradient", "fail", "0.70 not below 0.5")]),
    ]


def make_audit(*, classes: list[str] = CLASSES, n: int = 90, seed: int = 0, flip: int = 0,
               extra: list[StudyResult] | None = None, model_name: str = "xray-v2", root: str = "/data/test",
               critical: str | None = "COVID-19") -> AuditResult:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(classes)), n // len(classes))
    pred = np.where(rng.random(len(y)) < 0.85, y, (y + 1) % len(classes))
    if flip:
        right = np.flatnonzero(pred == y)[:flip]
        pred[right] = (y[right] + 1) % len(classes)
    studies = [_clean(y, pred, classes), *_others(), *(extra or [])]
    return AuditResult(
        model={"name": model_name, "fingerprint": "sha256:" + "ab" * 32, "class_names": classes,
               "input_shape": [64, 64, 1], "arch": "toy_cnn", "parameters": 1234},
        dataset={"root": root, "fingerprint": "sha256:" + "cd" * 32, "n_samples": len(y), "class_names": classes,
                 "class_counts": {c: int((y == k).sum()) for k, c in enumerate(classes)}},
        config={"seed": 0, "profile": "quick", "studies": {}}, environment={},
        ids=np.asarray([f"img_{i:03d}" for i in range(len(y))]), labels=y, class_names=classes,
        studies={s.name: s for s in studies}, robustkit_version="0.1.0", created="2025-01-01T00:00:00+00:00",
        task={"names": list(classes), "exclusive": True, "critical_class": critical})


def _policy(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


# ---------------------------------------------------------------- traceability


def test_every_card_number_equals_its_source_in_results_json(tmp_path: Path) -> None:
    folder = save_results(make_audit(), tmp_path / "audit")
    card = card_json(build_card(folder))
    stored = json.loads((folder / "results.json").read_text())["studies"]
    nums = [n for sec in card["sections"].values() for n in sec]
    assert len(nums) >= 15
    for n in nums:
        study, _, rest = n["metric"].partition(".")
        assert n["link"] == f"report.html#study-{study}"
        if n["source"] != "results.json":
            continue
        assert n["value"] == stored[study]["metrics"][rest], n["metric"]
        assert n["interval"] == stored[study]["intervals"].get(rest), n["metric"]


def test_specificity_matches_the_stored_confusion_and_an_independent_loop(tmp_path: Path) -> None:
    folder = save_results(make_audit(), tmp_path / "audit")
    audit = load_results(folder)
    card = card_json(build_card(folder))
    cm = np.asarray(json.loads((folder / "results.json").read_text())["studies"]["clean"]["data"]["confusion"])
    pred = audit.studies["clean"].records["pred"]
    assert np.array_equal(audit.studies["clean"].records["index"], np.arange(len(pred)))
    spec = {n["metric"]: n for n in card["sections"]["performance"] if ".specificity." in n["metric"]}
    assert len(spec) == 3
    for k, c in enumerate(CLASSES):
        negatives = audit.labels != k
        by_loop = float(np.mean(pred[negatives] != k))  # independent: over the records
        by_cm = (cm.sum() - cm[k].sum() - (cm[:, k].sum() - cm[k, k])) / (cm.sum() - cm[k].sum())
        entry = spec[f"clean.specificity.{c}"]
        assert entry["value"] == pytest.approx(by_loop) == pytest.approx(by_cm)
        lo, hi = entry["interval"]
        assert lo <= entry["value"] <= hi and hi - lo > 0


def test_the_critical_class_comes_first_in_the_per_class_table(tmp_path: Path) -> None:
    card = build_card(make_audit())
    labels = [n.label for n in card.sections["performance"] if n.label.startswith(("sensitivity", "specificity"))]
    assert [x for x in labels if x.startswith("sensitivity")][0] == "sensitivity COVID-19"
    assert [x for x in labels if x.startswith("specificity")][0] == "specificity COVID-19"
    html = card_html(card)
    assert html.index(">COVID-19<") < html.index(">NORMAL<")
    plain = build_card(make_audit(critical=None))  # no critical class: the model's order, no name guessed
    labels = [n.label for n in plain.sections["performance"] if n.label.startswith("sensitivity")]
    assert labels == [f"sensitivity {c}" for c in CLASSES]


def test_smallest_budget_and_honesty_checks(tmp_path: Path) -> None:
    card = build_card(make_audit())
    adv = {n.metric: n for n in card.sections["adversarial"]}
    assert set(adv) == {"adversarial.robust_accuracy.linf.0.5", "adversarial.robust_accuracy.l2.0.25"}
    assert "1 of 2 pass" in card.notes["adversarial"][0] and "loss rises and flattens (warn)" in card.notes["adversarial"][0]
    assert card.sections["shift"][0].metric == "perturbation.accuracy.jpeg.5"
    assert card.notes["saliency"] == ["Weight randomisation sanity: 1 of 2 pass; not passed: randomisation sanity: "
                                      "vanilla_gradient (fail)."]


# ---------------------------------------------------------------- acceptance


@pytest.mark.parametrize(("value", "interval", "form", "threshold", "expected"), [
    (0.93, (0.88, 0.97), "min", 0.90, ("lower bound", 0.88, "FAIL")),
    (0.93, (0.91, 0.97), "min", 0.90, ("lower bound", 0.91, "PASS")),
    (0.04, (0.02, 0.06), "max", 0.05, ("upper bound", 0.06, "FAIL")),
    (0.04, None, "max", 0.05, ("upper bound", math.nan, "FAIL")),  # no finite interval: never a silent point judgement
    (0.80, (0.75, 0.95), "min", 0.90, ("lower bound", 0.75, "FAIL")),
])
def test_judge_threshold(value, interval, form, threshold, expected) -> None:
    judged, judged_value, status, _ = judge_threshold(form, threshold, value, interval)
    assert (judged, status) == (expected[0], expected[2])
    assert judged_value == expected[1] or (math.isnan(judged_value) and math.isnan(expected[1]))


def test_point_passes_but_bound_fails_is_FAIL_with_both_numbers(tmp_path: Path) -> None:
    audit = make_audit()
    acc, (lo, _) = audit.metric("clean.accuracy"), audit.interval("clean.accuracy")
    threshold = round((acc + lo) / 2, 3)  # between the lower bound and the point
    pol = _policy(tmp_path, f'[[rule]]\nmetric = "clean.accuracy"\nmin = {threshold}\nname = "accuracy holds"\n'
                            '[[rule]]\nmetric = "calibration.ece_ts"\nmax = 0.06\n'
                            '[[rule]]\nmetric = "clean.sensitivity.*"\nmin = 0.5\n')
    card = build_card(audit, policy=pol)
    rows = {r.metric: r for r in card.acceptance}
    row = rows["clean.accuracy"]
    assert row.status == "FAIL" and "the point" in row.reason and "clears" in row.reason and row.judged_value == lo
    assert rows["calibration.ece_ts"].status == "PASS" and rows["calibration.ece_ts"].judged == "upper bound"
    assert sum(r.metric.startswith("clean.sensitivity.") for r in card.acceptance) == 3
    assert card.verdict == "FAIL"
    text = unescape(re.sub(r"<[^>]+>", " ", card_html(card)))
    assert f"{acc:.3f}" in text and f"{lo:.3f}" in text and "accuracy holds" in text
    assert "FAIL" in text and "clears" in text


def test_max_drop_needs_a_baseline_and_uses_the_paired_test(tmp_path: Path) -> None:
    pol = _policy(tmp_path, '[[rule]]\nmetric = "clean.accuracy"\nmax_drop = 0.01\n')
    alone = build_card(make_audit(), policy=pol)
    assert [r.status for r in alone.acceptance] == ["SKIPPED"]
    base = make_audit()
    worse = build_card(make_audit(flip=25), policy=pol, baseline=base)
    assert [r.status for r in worse.acceptance] == ["FAIL"]
    assert [d.metric for d in worse.changes][:1] == ["clean.accuracy"]
    assert worse.changes[0].discordant == (25, 0)
    same = build_card(make_audit(), policy=pol, baseline=base)
    assert [r.status for r in same.acceptance] == ["PASS"] and same.changes == []


# ---------------------------------------------------------------- studies in flight: data-driven


def test_slices_ood_and_ensemble_light_up_when_present() -> None:
    extra = [
        StudyResult(name="slices", metrics={"worst.accuracy": 0.55, "worst.gap": -0.3, "probe.auroc.site": 0.97,
                                            "accuracy.site=A": 0.9, "n_flagged": 1.0},
                    intervals={"probe.auroc.site": [0.94, 0.99]}, directions={"worst": "higher", "probe.auroc": "lower"},
                    data={"worst": {"slice": "site=B"}, "slice_defs": {"site=A": {}, "site=B": {}}}),
        StudyResult(name="ood", metrics={"auroc.energy.far": 0.99, "auroc.energy.near": 0.8, "auroc.msp.far": 0.7,
                                         "confident_critical_rate.near": 0.12},
                    directions={"auroc": "higher", "confident_critical_rate": "lower"}, data={"recommended": "energy"}),
    ]
    audit = make_audit(extra=extra)
    adv = audit.studies["adversarial"]
    adv.config["attack"] = "ensemble"  # the standard profile's AutoAttack-style ensemble (#17)
    smallest = min(float(m.split(".", 2)[2]) for m in adv.metrics if m.startswith("robust_accuracy.linf."))
    budget = f"{smallest:g}"
    adv.metrics[f"robust_accuracy.apgd_ce.linf.{budget}"] = 0.55
    card = build_card(audit)
    assert [n.metric for n in card.sections["ood"]] == ["ood.auroc.energy.far", "ood.auroc.energy.near",
                                                        "ood.confident_critical_rate.near"]
    assert [n.metric for n in card.sections["slices"]] == ["slices.worst.accuracy", "slices.worst.gap",
                                                           "slices.n_flagged", "slices.probe.auroc.site"]
    assert "site=B" in card.sections["slices"][0].label
    labels = {n.metric: n.label for n in card.sections["adversarial"]}
    assert f"adversarial.robust_accuracy.apgd_ce.linf.{budget}" in labels
    assert any(label.startswith("ensemble") for label in labels.values())
    assert not any("'slices' was not run" in t or "'ood' was not run" in t for t in card.limitations)
    html = card_html(card)
    assert 'id="card-ood"' in html and 'id="card-slices"' in html


def test_limitations_say_what_was_not_run_and_the_phantom(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    root.mkdir()
    (root / "phantom.json").write_text("{}")
    card = build_card(make_audit(root=str(root)))
    text = " ".join(card.limitations)
    for s in ("noise", "slices", "ood"):
        assert f"'{s}' was not run" in text
    assert "'clean' was not run" not in text and "phantom" in text
    assert "No intended-use statement" in text and "No acceptance policy" in text
    assert card.sections["ood"] == [] and 'id="card-ood"' not in card_html(card)
    real = build_card(make_audit(root=str(tmp_path / "elsewhere")))
    assert "phantom" not in " ".join(real.limitations)


# ---------------------------------------------------------------- files, schemas, escaping


def test_cli_writes_card_and_exports_that_validate(tmp_path: Path, capsys) -> None:
    folder = save_results(make_audit(), tmp_path / "audit")
    use = tmp_path / "use.md"
    use.write_text("Triage support for adult chest radiographs (PA/AP). Not for children.")
    pol = _policy(tmp_path, '[[rule]]\nmetric = "clean.accuracy"\nmin = 0.5\n')
    assert main(["card", str(folder), "--policy", str(pol), "--intended-use", str(use)]) == 0
    html = (folder / "card.html").read_text()
    size = len(html.encode())
    print(f"card.html of a hand-made audit: {size} bytes")
    assert size < 200_000 and "Not for children" in html and "<script" not in html
    assert 'script-src \'none\'' in html
    data = json.loads((folder / "card.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["verdict"] == "PASS" and data["intended_use"]["provided"]
    mct = json.loads((folder / "card.model_card.json").read_text())
    jsonschema.validate(mct, MCT_SCHEMA)
    perf = mct["quantitative_analysis"]["performance_metrics"]
    assert {"type", "value", "slice"} <= set(perf[0]) and any("confidence_interval" in p for p in perf)
    yaml = (folder / "card.model-index.yaml").read_text()
    assert yaml.startswith("model-index:\n- name: \"xray-v2\"") and yaml.count("- type: ") == len(
        [n for s in data["sections"].values() for n in s])


def test_schema_rejects_a_card_without_intervals_key(tmp_path: Path) -> None:
    data = card_json(build_card(make_audit()))
    jsonschema.validate(data, SCHEMA)
    del data["sections"]["performance"][0]["interval"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)


def test_hostile_model_and_class_names_render_inert(tmp_path: Path) -> None:
    classes = [HOSTILE, "COVID-19", "<b>x</b>"]
    audit = make_audit(classes=classes, model_name=HOSTILE)
    use = tmp_path / "use.md"
    use.write_text(HOSTILE)
    html = card_html(build_card(audit, intended_use=use))
    assert "<script" not in html and "<img" not in html and "<b>x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    yaml = model_index_yaml(build_card(audit))
    assert '- name: "<script>alert(1)</script>\\"><img src=x onerror=alert(1)>"' in yaml
    jsonschema.validate(mct_json(build_card(audit)), MCT_SCHEMA)


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    folder = save_results(make_audit(), tmp_path / "audit")
    assert main(["card", str(folder), "--intended-use", str(tmp_path / "nope.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustkit: error: --intended-use") and "nope.md" in err and "\n" not in err
    pol = _policy(tmp_path, '[[rule]]\nmetric = "clean.nothing"\nmin = 0.5\n')
    assert main(["card", str(folder), "--policy", str(pol)]) == 2
    assert "clean.nothing" in capsys.readouterr().err


def test_card_does_not_import_tensorflow(tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = save_results(make_audit(), tmp_path / "audit")
    code = ("import sys; from robustkit.card_export import write_card; "
            f"write_card({str(folder)!r}); assert 'tensorflow' not in sys.modules, 'tf imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert (folder / "card.html").is_file()


def test_write_card_out_option(tmp_path: Path) -> None:
    folder = save_results(make_audit(), tmp_path / "audit")
    paths = write_card(folder, out=tmp_path / "cards" / "v2.html")
    assert sorted(p.name for p in paths.values()) == ["v2.html", "v2.json", "v2.model-index.yaml", "v2.model_card.json"]
    assert all(p.is_file() for p in paths.values())
