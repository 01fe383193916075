#!/usr/bin/env python
"""Make a sample multi-stage report for the docs: two dated studies of one patient.

Builds two synthetic chest CTs of one patient (pipeline.phantom; the earlier one with
less disease), writes each as a DICOM series of its own study and date, runs the AI
chain with a model bundle (default: the shipped demo bundle) on both, fuses the dates
(pipeline.stages, ``--rule``) as the node does with ``[priors]`` on, and builds the later
study's SR with the trend (dicomnode/writers/trend.py; the earlier study's instances as
Pertinent Other Evidence). Writes::

    <out>/prior/ct/*.dcm, <out>/current/ct/*.dcm   the two source series
    <out>/sr/SR001.dcm                             the later study's report
    <out>/summary.json                             its summary with ``multi_stage``

and the SR as DCMTK's ``dsrdump`` prints it into docs/sr_multistage_dsrdump.txt. The
C-FIND / C-MOVE part of the node is not run here (tests/test_priors_node.py does that
with Orthanc); the stages and the report are built by the same functions.

    .venv/bin/python scripts/make_multistage_sample.py --out data/multistage_sample
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.models import DEFAULT_BUNDLE_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE_DIR, help="model bundle folder")
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "data" / "multistage_sample", help="output folder (replaced)"
    )
    p.add_argument("--prior-label", default="covid19", help="phantom class of the earlier study")
    p.add_argument("--prior-seed", type=int, default=8)
    p.add_argument("--label", default="covid19", help="phantom class of the later study")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--size", type=int, default=256, help="matrix size in pixels")
    p.add_argument("--rule", default="mean", help="multi-stage rule (pipeline.stages.MULTI_STAGE_RULES)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dsrdump",
        type=Path,
        default=REPO_ROOT / "docs" / "sr_multistage_dsrdump.txt",
        help="where to write dsrdump's text of the SR ('-' for standard output only)",
    )
    p.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="also open the later study and its SR in OHIF (Orthanc + tests/ohif) and save the SR's view here",
    )
    return p.parse_args(argv)


def _screenshot(sources, sr, target: Path, work: Path) -> None:
    """The SR as OHIF Viewer v3 draws it on its key slice (tests/ohif/harness.py)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from make_viewer_screenshots import small_png
    from ohif.harness import run_driver, upload, viewer_missing_reason

    from dicomweb_proxy import serving
    from orthanc import orthanc_missing_reason, running_orthanc

    reason = orthanc_missing_reason(dicomweb=True) or viewer_missing_reason()
    if reason:
        print(f"no OHIF screenshot: {reason}", file=sys.stderr)
        return
    with running_orthanc(work, aet="PACS", dicomweb=True) as pacs:
        upload(pacs, sources)
        upload(pacs, [sr])
        with serving(pacs.dicomweb_url + "/") as base:
            options = {"baseUrl": base, "studyUid": str(sources[0].StudyInstanceUID), "outDir": str(work / "shots")}
            report = run_driver(
                {
                    **options,
                    "srSeries": int(sr.SeriesNumber),
                    "srTexts": ["Lesions of infection, share of lung volume"],
                    "timeoutMs": 60000,
                }
            )
    if not report.get("ok"):
        raise SystemExit(f"OHIF driver stopped: {report.get('error')}")
    size = small_png(work / "shots" / "sr.png", target)
    print(f"wrote {target} ({size // 1024} KiB)")


def _study(out: Path, label: str, seed: int, date: str, args, bundle):
    """Write one dated phantom study, read it back as the node does, analyse it."""
    import pydicom

    from dicomnode.synthetic import write_ct_series
    from dicomnode.volume import load_series
    from pipeline.chain import analyze
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    phantom = make_phantom(label, seed, n_slices=args.slices, size_px=args.size)
    series = write_ct_series(phantom.volume, out / "ct", accession_number=f"SYN{seed:04d}")
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.save_as(path, enforce_file_format=True)
    volume, sources = load_series(series.paths)
    return volume, sources, analyze(volume, bundle, ChainParams(device=args.device))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from make_sample_results import _dsrdump

    from dicomnode.writers import WriterOptions, build_result_objects, read_findings
    from dicomnode.writers.trend import Trend
    from pipeline.models import load_bundle
    from pipeline.stages import fuse_stages, stage_from_summary

    if args.out.exists():
        shutil.rmtree(args.out)
    bundle = load_bundle(args.bundle, args.device)
    p_volume, p_sources, p_result = _study(
        args.out / "prior", args.prior_label, args.prior_seed, "20260110", args, bundle
    )
    volume, sources, result = _study(args.out / "current", args.label, args.seed, "20260315", args, bundle)
    summary = result.summary(volume)
    current = stage_from_summary(summary, str(sources[0].StudyInstanceUID), dt.date(2026, 3, 15), current=True)
    prior = stage_from_summary(p_result.summary(p_volume), str(p_sources[0].StudyInstanceUID), dt.date(2026, 1, 10))
    fused = fuse_stages([current, prior], args.rule, bundle.operating_points)
    trend = Trend(fused, tuple(p_sources), (), 730)
    summary["multi_stage"] = trend.summary
    options = WriterOptions(enabled={"sr"}, uid_seed=f"multistage-sample-{args.seed}", trend=trend)
    sr = build_result_objects(result, volume, sources, options)["sr"][0]
    (args.out / "sr").mkdir(parents=True)
    sr_path = args.out / "sr" / "SR001.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["multi_stage"], indent=2))
    print(f"\nSR summary text: {read_findings(sr).summary}")
    how = (
        f"Made by scripts/make_multistage_sample.py: prior phantom {args.prior_label} seed {args.prior_seed} "
        f"(2026-01-10), current phantom {args.label} seed {args.seed} (2026-03-15), {args.slices} slices of "
        f"{args.size}x{args.size}, rule {args.rule}, bundle {result.model.name} {result.model.version}; "
        "printed by DCMTK 'dsrdump +Pl +Pu +Pt'."
    )
    _dsrdump(sr_path, args.dsrdump, how)
    if args.screenshot is not None:
        _screenshot(sources, sr, args.screenshot, args.out / "ohif")
    return 0


if __name__ == "__main__":
    sys.exit(main())
