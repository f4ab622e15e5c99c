"""``robustkit demo``: the whole job on the embedded default.

Generates the phantom chest X-ray train and test sets, trains (or reuses a cached)
InceptionV3 checkpoint from scratch with the demo recipe, audits it on the held-out test
set with every available study, and writes the report and the audit card. Generated data and the
checkpoint are cached under ``cache`` (keyed by the recipe and seed), so a second run
only audits.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from robustkit.results import AuditResult

__all__ = ["DEMO_AUDIT", "DEMO_CRITICAL_CLASS", "DEMO_SITES", "demo_paths", "run_demo"]

#: Acquisition sites of the demo's phantoms (balanced: every class equally at every site),
#: so that the slices study has site, view, sex and age metadata to slice by.
DEMO_SITES = 3

#: Study options the demo adds to the ``standard`` profile so that the whole demo (data,
#: training, audit) finishes in under 15 minutes on two CPU cores: every study runs, on
#: fewer images where a study's cost is many model passes per image. ``--profile quick`` and
#: ``--profile full`` run those profiles unchanged.
DEMO_AUDIT: dict[str, dict[str, Any]] = {
    "perturbation": {"max_samples": 90},
    "noise": {"max_samples": 90},
    "adversarial": {"max_samples": 48},
    "saliency": {"max_samples": 12, "stability_samples": 6, "smoothgrad_n": 16,
                 "randomization_samples": 3, "randomization_steps": 4},
    "ood": {"n_per_set": 32, "n_bootstrap": 200},
    # 24 images x 128 draws at one noise level: about 3,100 InceptionV3 passes (about a minute
    # on two cores); the standard profile's 50 images x 3 levels x 512 draws take an hour there.
    # The consistency check on 3 certified images (5 steps, 8 draws a step): about 140 gradient
    # and 680 model passes, about a third more time (4 images, side by side on busy cores: 102 -> 151 s)
    "smoothing": {"max_samples": 24, "sigmas": (0.25,), "n0": 16, "n": 112, "check_samples": 3, "check_steps": 5,
                  "check_draws": 8},
}


#: The demo model's critical class (the output whose misses cost most): configuration of the
#: demo audit, as any audit's ``critical_class``, never a name in the studies.
DEMO_CRITICAL_CLASS = "COVID-19"


def _key(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def demo_paths(cache: Path, seed: int) -> dict[str, Path]:
    """Where the demo keeps its train set, test set and checkpoint for this recipe and seed."""
    from robustkit.data.phantom import PHANTOM_VERSION
    from robustkit.model.training import DEMO_RECIPE

    key = _key({"recipe": DEMO_RECIPE, "seed": seed, "phantom": PHANTOM_VERSION, "sites": DEMO_SITES})
    return {
        "train": cache / f"phantom-train-{key}",
        "test": cache / f"phantom-test-{key}",
        "checkpoint": cache / f"demo-{DEMO_RECIPE['arch']}-{key}.keras",
    }


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def run_demo(
    *,
    out: str | Path = Path("reports") / "demo",
    cache: str | Path = Path("data") / "generated",
    profile: str = "standard",
    retrain: bool = False,
    seed: int = 0,
    quiet: bool = False,
) -> AuditResult:
    """Run the demo audit and return its result (the report is ``out/report.html``, the audit
    card ``out/card.html``)."""
    from robustkit.data.phantom import generate_phantom
    from robustkit.model.training import DEMO_RECIPE, train
    from robustkit.runner import audit

    r = DEMO_RECIPE
    paths = demo_paths(Path(cache), seed)
    for split, per_class, split_seed in (
        ("train", r["train_per_class"], seed),
        ("test", r["test_per_class"], seed + 10_000),
    ):
        if not (paths[split] / "phantom.json").is_file():
            _say(quiet, f"demo: writing the {split} phantom ({per_class} per class) to {paths[split]}")
            generate_phantom(paths[split], per_class=per_class, size=r["phantom_size"], seed=split_seed,
                             progress=not quiet, sites=DEMO_SITES)
    if retrain or not paths["checkpoint"].is_file():
        _say(quiet, f"demo: training {r['arch']} from scratch ({r['epochs']} epochs) -> {paths['checkpoint']}")
        train(paths["train"], paths["checkpoint"], arch=r["arch"], input_size=r["input_size"],
              epochs=r["epochs"], batch_size=r["batch_size"], weights="none", seed=seed,
              learning_rate=r.get("learning_rate"), augment=r.get("augment", True), quiet=quiet)
    else:
        _say(quiet, f"demo: reusing the cached checkpoint {paths['checkpoint']}")
    _say(quiet, f"demo: auditing on the held-out test phantom -> {out}")
    from robustkit.studies import available

    tables = {k: v for k, v in DEMO_AUDIT.items() if k in available()} if profile == "standard" else {}
    config = {"critical_class": DEMO_CRITICAL_CLASS, **tables}
    result = audit(paths["checkpoint"], paths["test"], profile=profile, seed=seed, out=out, quiet=quiet,
                   config=config)
    from robustkit.card_export import write_card

    card = write_card(out)["html"]  # the one-page audit card beside report.html
    _say(quiet, f"demo: audit card -> {card}")
    return result
