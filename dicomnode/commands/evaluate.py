"""``dicomnode evaluate --data SPEC --out REPORT_DIR``: a bundle measured with the paper's
protocol (pipeline.evaluate). Parses, loads the bundle and the data, calls, and says
where the report is. A bad bundle, data spec or readers file ends with a one-line error
and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from ._args import EXIT_USAGE, add_progress_flags, whole_number

log = logging.getLogger(__name__)


_non_negative = whole_number(0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="BUNDLE_DIR",
        help="model bundle to evaluate (default: the shipped demo bundle)",
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SPEC",
        help="evaluation data: 'phantom:count=N,seed=S[,...]', a manifest CSV, a MosMedData or "
        "CC-CCII folder (see pipeline.datasets); repeat to evaluate on several together",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="REPORT_DIR",
        help="folder for scores.csv, metrics.json, report.md and the PNG plots",
    )
    p.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% confidence intervals (0: no intervals; default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the t-SNE (default 0)")
    p.add_argument(
        "--readers",
        type=Path,
        default=None,
        metavar="READERS.csv",
        help="reader study calls (columns case_id,reader,call) for the Table 3 comparison",
    )
    p.add_argument(
        "--reader-task",
        default="auto",
        choices=("auto", "multi_way", "pneumonia_vs_non_pneumonia", "covid19_vs_cap", "covid19_vs_influenza"),
        help="what the readers were asked (default auto: a COVID-19-vs-CAP or -influenza cohort is "
        "recognised from its truths, else multi-way)",
    )
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="leave out (and list) cases the chain cannot analyse instead of stopping",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--top-k", type=int, default=None, help="top-K of the fusion (default: the chain's, 3)")
    add_progress_flags(p)


class _Pooled(list):
    """Several data sets evaluated together (their cases in order), described as a list."""

    def __init__(self, datasets: list) -> None:
        super().__init__(c for d in datasets for c in d)
        self.datasets = datasets

    def describe(self) -> dict:
        return {"pooled": [d.describe() if hasattr(d, "describe") else {} for d in self.datasets]}


def run(args: argparse.Namespace) -> int:
    from pipeline.datasets import open_dataset
    from pipeline.evaluate import EvaluationError, evaluate_bundle
    from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
    from pipeline.params import ChainParams
    from pipeline.types import PipelineError

    bundle_dir = args.bundle or DEFAULT_BUNDLE_DIR
    # evaluate_bundle switches off what no score depends on (Grad-CAM, phenotype).
    params = replace(ChainParams(), device=args.device)
    if args.top_k is not None:
        if args.top_k < 1:
            print("dicomnode evaluate: error: --top-k must be 1 or more", file=sys.stderr)
            return EXIT_USAGE
        params = replace(params, top_k=args.top_k)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        if args.readers is not None and not args.readers.is_file():
            raise EvaluationError(f"readers file {args.readers} does not exist")
        # First: a bad spec fails before the models load.
        datasets = [open_dataset(spec) for spec in args.data]
        dataset = datasets[0] if len(datasets) == 1 else _Pooled(datasets)
        bundle = load_bundle(bundle_dir, args.device)
        log.info("evaluating bundle %s (sha256 %s...) on %d cases", bundle_dir, bundle.sha256[:12], len(dataset))
        metrics = evaluate_bundle(
            bundle,
            dataset,
            params,
            args.out,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            readers=args.readers,
            data_spec=" + ".join(args.data),
            progress=progress,
            reader_task=args.reader_task,
            skip_failed=args.skip_failed,
        )
    except (PipelineError, ValueError, OSError) as e:
        print(f"dicomnode evaluate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    micro = metrics.classes.multiway_auc.micro.value
    micro_text = "n/a" if micro is None else f"{micro:.4f}"
    failed = 0 if metrics.run is None else len(metrics.run.failed_cases)
    print(
        f"{metrics.n_cases} cases"
        + (f" ({failed} failed, left out)" if failed else "")
        + f"; multi-way AUC (micro) {micro_text}; report: {args.out / 'report.md'}"
    )
    if metrics.cxr is not None:
        c = metrics.cxr

        def auc(block) -> str:
            return "n/a" if block.auc.value is None else f"{block.auc.value:.4f}"

        print(
            f"CXR branch, {c.positive} vs {', '.join(x for x in c.classes if x != c.positive)} on {c.n_cases} "
            f"cases: AUC CT alone {auc(c.ct)}, CXR alone {auc(c.cxr)}, fused {auc(c.fused)}"
        )
    return 0
