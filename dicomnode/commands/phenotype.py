"""``dicomnode phenotype --bundle B --data SPEC --out DIR``: the phenotype study of the
attentional regions of a cohort's pneumonia cases (pipeline.phenotype_study). Parses,
loads the bundle and the data, calls, and says where the report is. A bad bundle or data
spec, or a cohort the study cannot run on, ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from ._args import EXIT_USAGE, add_progress_flags, quiet_loggers, whole_number

log = logging.getLogger(__name__)


def _sigmas(text: str) -> tuple[float, ...]:
    """``--log-sigma 2,4``: positive numbers in mm; empty or 'none' for no LoG image type."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sigmas in mm separated by commas, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"sigmas must be positive, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="BUNDLE_DIR",
        help="model bundle whose attention is studied (default: the shipped demo bundle)",
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SPEC",
        help="cohort: 'phantom:count=N,seed=S[,...]', a manifest CSV, a MosMedData or CC-CCII folder "
        "(see pipeline.datasets); repeat to pool several (each phantom spec with its own seed)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder for features.csv, selected.json, tests.csv, report.md and the PNG plots",
    )
    p.add_argument(
        "--log-sigma",
        type=_sigmas,
        default=None,
        metavar="MM[,MM...]",
        help="sigmas of the LoG image types in mm ('none': no LoG; default 2,4)",
    )
    p.add_argument("--no-wavelet", action="store_true", help="leave out the wavelet image types (faster)")
    p.add_argument(
        "--max-selected",
        type=whole_number(1),
        default=None,
        metavar="N",
        help="LASSO keeps at most N features (default 12, as in the paper)",
    )
    p.add_argument(
        "--explained-slices",
        type=whole_number(1),
        default=None,
        metavar="N",
        help="slices explained (Guided Grad-CAM) per case (default: the chain's, 5); fewer is faster",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="leave out (and list) cases the chain cannot analyse instead of stopping",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_progress_flags(p)


def _quiet_radiomics(args: argparse.Namespace) -> None:
    """pyradiomics logs every feature class of every slice at INFO, and sets its logger to
    INFO when imported: import it first, then quieten it (unless -v)."""
    try:
        import radiomics  # noqa: F401
    except ImportError:
        return
    quiet_loggers(args, ("radiomics",))


def _study_params(args: argparse.Namespace):
    from pipeline.params import PhenotypeStudyParams

    study = replace(PhenotypeStudyParams(), seed=args.seed, wavelet=not args.no_wavelet)
    if args.log_sigma is not None:
        study = replace(study, log_sigma_mm=args.log_sigma)
    if args.max_selected is not None:
        study = replace(study, max_selected=args.max_selected)
    return study


def run(args: argparse.Namespace) -> int:
    from pipeline.datasets import open_dataset
    from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
    from pipeline.params import ChainParams
    from pipeline.phenotype_study import (
        StudyRun,
        check_case_ids,
        radiomics_params,
        run_phenotype_study,
        study_settings,
    )
    from pipeline.types import PipelineError

    _quiet_radiomics(args)
    params = replace(ChainParams(), device=args.device)
    if args.explained_slices is not None:
        params = replace(params, max_explained_slices=args.explained_slices)
    study = _study_params(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        # First: a bad spec fails before the models load.
        datasets = [open_dataset(spec) for spec in args.data]
        cases = [case for d in datasets for case in d]
        check_case_ids(cases)
        bundle = load_bundle(args.bundle or DEFAULT_BUNDLE_DIR, args.device)
        log.info("phenotype study: bundle %s (sha256 %s...), %d cases", bundle.path, bundle.sha256[:12], len(cases))
        info = bundle.info
        run_info = StudyRun(
            data_spec=" + ".join(args.data),
            synthetic_data=any(getattr(d, "synthetic", False) for d in datasets),
            bundle_name=info.name,
            bundle_version=info.version,
            bundle_sha256=bundle.sha256,
            bundle_trained_on_synthetic_data=info.trained_on_synthetic_data,
            bundle_disclaimer=info.disclaimer,
            settings=study_settings(radiomics_params(params, study), study),
        )
        outcome = run_phenotype_study(
            bundle, cases, args.out, run_info, params, study, progress=progress, skip_failed=args.skip_failed
        )
    except (PipelineError, ValueError, OSError) as e:
        print(f"dicomnode phenotype: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    selected = ", ".join(
        f"{r.comparison.name} {len(r.selection.features) if r.selection else 0}" for r in outcome.results
    )
    print(
        f"{len(outcome.cohort.cases)} pneumonia cases with features "
        f"({len(outcome.cohort.skipped)} without); LASSO selected: {selected}; report: {outcome.out_dir / 'report.md'}"
    )
    return 0
