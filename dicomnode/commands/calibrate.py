"""``dicomnode calibrate --bundle B --data SPEC``: a trained bundle's operating points and
out-of-domain reference, chosen on a calibration cohort (pipeline.calibration), written
into its model card (``operating_points``, ``domain_reference``) and
``domain_reference.npz``. Parses, loads, calls, writes, says what it chose. A bad bundle
or data spec ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import io
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ._args import EXIT_USAGE, add_progress_flags

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, metavar="BUNDLE_DIR", help="the trained bundle to calibrate")
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SPEC",
        help="calibration cohort, drawn like the training data but never trained on (repeatable)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pipeline.calibration import choose_operating_points, class_counts, fit_reference
    from pipeline.datasets import open_dataset
    from pipeline.evaluate import score_cases
    from pipeline.models import DOMAIN_FILE, load_bundle, sha256_file
    from pipeline.params import ChainParams, EvalParams
    from pipeline.training.bundle import record_card_fields
    from pipeline.types import PipelineError

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    # Only scores are needed: no Grad-CAM, no phenotype; no reference lung segmentation.
    params = replace(ChainParams(), device=args.device, max_explained_slices=0, compute_phenotype=False)
    try:
        datasets = [open_dataset(spec) for spec in args.data]
        bundle = load_bundle(args.bundle, args.device)
        # Calibrate what the networks say, not what an earlier calibration decided.
        bundle = replace(bundle, domain_reference=None)
        cases = [c for d in datasets for c in d]
        records = score_cases(cases, bundle, params, EvalParams(classical_reference=False), progress=progress)
        op = choose_operating_points(records)
        reference = fit_reference(records)
    except (PipelineError, ValueError, OSError) as e:
        print(f"dicomnode calibrate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    buf = io.BytesIO()
    np.savez(buf, **reference.to_arrays())  # type: ignore[arg-type]  # numpy's stub takes **kwds for allow_pickle
    (args.bundle / DOMAIN_FILE).write_bytes(buf.getvalue())
    command = "dicomnode calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    measured_on = {
        "data_specs": list(args.data),
        "n_cases": len(records),
        "class_counts": class_counts(records),
        "command": command,
    }
    record_card_fields(
        args.bundle,
        {
            "operating_points": {**op.as_card(), **measured_on},
            "domain_reference": {
                "file": DOMAIN_FILE,
                "sha256": sha256_file(args.bundle / DOMAIN_FILE),
                "thresholds": dict(reference.thresholds),
                "n_cases_fit": reference.n_cases,
                "rule": "fitted on the even-numbered calibration cases, thresholds = 1.25 x the 99th "
                "percentile of the odd-numbered cases' distances (z-scores at least 4)",
                **measured_on,
            },
        },
    )
    print(
        f"calibrated {args.bundle} on {len(records)} cases: "
        + ", ".join(f"{k} {v:.3f}" for k, v in op.thresholds().items() if k != "out_of_domain")
    )
    return 0
