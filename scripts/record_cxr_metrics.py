"""Write the CXR branch's figures of scripts/train_demo_bundle.sh into the bundle's card.

Usage: record_cxr_metrics.py BUNDLE REPORT_DIR

Reads REPORT_DIR/metrics.json (``dicomnode evaluate`` of the shipped bundle with its CXR
model on the held-out phantoms of both families) and puts its ``cxr`` section (CT alone,
CXR alone and fused, with bootstrap intervals), the data it was measured on and the
command into the card's ``cxr.evaluations.pooled``. Only the card's ``cxr`` section
changes: the CT's figures (``metrics``, ``cross_family``) stay as they are. Every number
comes from the file; nothing is typed in here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.figures import EvaluationMetrics
from pipeline.training.bundle import record_card_fields

HELD_OUT = (
    "family A seed 900000 and family B seed 900001 at 224 px, together (the cases whose truth is COVID-19 or "
    "CAP): seeds and matrix size never trained on"
)


def main(bundle: str, report: str) -> None:
    path = Path(report) / "metrics.json"
    m = EvaluationMetrics.from_json(json.loads(path.read_text()))
    if m.run is None or m.cxr is None:
        raise SystemExit(
            f"{path}: no CXR comparison (was it written by 'dicomnode evaluate' of a bundle with a CXR model?)"
        )
    specs = [s.strip() for s in m.run.data_spec.split(" + ")]
    record = {
        "measured_by": "dicomnode evaluate",
        "command": f"dicomnode evaluate --bundle {bundle} "
        + " ".join(f"--data {s}" for s in specs)
        + f" --bootstrap {m.bootstrap.n_resamples} --seed {m.bootstrap.seed}",
        "data_spec": m.run.data_spec,
        "held_out": HELD_OUT,
        "evaluated_card_sha256": m.run.bundle_sha256,
        "bootstrap": {
            "n_resamples": m.bootstrap.n_resamples,
            "seed": m.bootstrap.seed,
            "confidence": m.bootstrap.confidence,
            "method": m.bootstrap.method,
        },
        **m.cxr.to_json(),
    }
    card = json.loads((Path(bundle) / "model_card.json").read_text())
    section = dict(card.get("cxr") or {})
    section["evaluations"] = {"pooled": record}
    print(record_card_fields(bundle, {"cxr": section}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
