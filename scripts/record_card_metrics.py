"""Write the evaluation figures of scripts/train_demo_bundle.sh into the bundle's card.

Usage: record_card_metrics.py BUNDLE REPORT_DIR XFAMILY_DIR

Reads REPORT_DIR/{pooled,family_a,family_b}/metrics.json (the shipped bundle on held-out
phantoms of both families) and REPORT_DIR/xfamily_trained_on_{a,b}/metrics.json (bundles
trained on one family, evaluated on the other; their cards lie in XFAMILY_DIR), keeps
the figures people look for, the data each was measured on and the command, and puts
them into the card's ``metrics`` and ``cross_family``. Every number comes from those
files; nothing is typed in here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.figures import EvaluationMetrics
from pipeline.training.bundle import record_card_fields

KEEP = (
    "n_cases",
    "class_counts",
    "per_class_auc",
    "multiway_auc",
    "accuracy",
    "confusion_matrix",
    "tasks",
    "lung_dice",
    "locating",
    "decision",
    "infectious_slices",
    "non_pneumonia_flagged_slices",
    "non_pneumonia_stated_slices",
    "lesion_inclusion",
    "lesion_dice",
    "lesion_share",
    "heat_inside_lung",
    "heat_on_lesion",
    "lesion_pattern",
    "severity",
    "lobes",
    "operating_points",
)
HELD_OUT = {
    "family_a": "family A (pipeline.phantom) seed 900000 at 224 px: seeds and matrix size never trained on",
    "family_b": "family B (pipeline.phantoms) seed 900001 at 224 px: seeds and matrix size never trained on",
    "pooled": "both held-out cohorts together",
}


def _record(metrics_path: Path, bundle_dir: str, held_out: str) -> dict:
    m = EvaluationMetrics.from_json(json.loads(metrics_path.read_text()))
    if m.run is None:
        raise SystemExit(f"{metrics_path}: not written by 'dicomnode evaluate' (it names no bundle or data)")
    figures = m.to_json()  # the file's figures, keys as metrics.json names them
    return {
        "measured_by": "dicomnode evaluate",
        "command": (
            f"dicomnode evaluate --bundle {bundle_dir} "
            + " ".join(f"--data {s.strip()}" for s in m.run.data_spec.split(" + "))
            + f" --bootstrap {m.bootstrap.n_resamples} --seed {m.bootstrap.seed}"
        ),
        "data_spec": m.run.data_spec,
        "held_out": held_out,
        "evaluated_card_sha256": m.run.bundle_sha256,
        "bootstrap": {k: figures["bootstrap"][k] for k in ("n_resamples", "seed", "confidence", "method")},
        **{k: figures[k] for k in KEEP if k in figures},
    }


def _earlier_cross_family(bundle: Path) -> dict:
    """The card's cross-family figures when this run made none (the xfamily stage skipped,
    networks not retrained: retraining drops them from the card); each says which bundle
    version's recipe measured it (XFAMILY_RECIPE_VERSION), since they were not rerun."""
    card = json.loads((bundle / "model_card.json").read_text())
    kept = {}
    for name, rec in (card.get("cross_family") or {}).items():
        rec = dict(rec)
        version = rec.setdefault("recipe_version", os.environ.get("XFAMILY_RECIPE_VERSION", "an earlier"))
        if "not rerun" not in rec["held_out"]:
            rec["held_out"] += f" (bundles of the {version} recipe, not rerun since)"
        kept[name] = rec
    return kept


def main(bundle: str, report: str, xfamily: str) -> None:
    rep = Path(report)
    evaluations = {name: _record(rep / name / "metrics.json", bundle, text) for name, text in HELD_OUT.items()}
    cross = {}
    for trained, evaluated in (("a", "b"), ("b", "a")):
        path = rep / f"xfamily_trained_on_{trained}" / "metrics.json"
        if not path.is_file():
            continue
        card = json.loads((Path(xfamily) / f"trained_on_{trained}" / "model_card.json").read_text())
        rec = _record(
            path,
            f"{xfamily}/trained_on_{trained}",
            f"trained and calibrated on family {trained.upper()} only, evaluated on held-out "
            f"family {evaluated.upper()}",
        )
        rec["trained_on"] = {role: e["training"]["data_specs"] for role, e in card["models"].items()}
        if card.get("lesion_pattern"):
            rec["trained_on"]["lesion_pattern"] = card["lesion_pattern"]["training"]["data_specs"]
        rec["calibrated_on"] = card.get("operating_points", {}).get("data_specs")
        cross[f"trained_on_{trained}_evaluated_on_{evaluated}"] = rec
    if not cross:
        cross = _earlier_cross_family(Path(bundle))
    print(
        record_card_fields(
            bundle, {"metrics": {"headline": "pooled", "evaluations": evaluations}, "cross_family": cross}
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
