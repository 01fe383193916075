"""``dicomnode demo``: send a synthetic chest CT to a running node, wait, print the report.

What a newcomer runs to see the product work end to end: a phantom with a known label is
sent by C-STORE like a scanner would, the node completes the series after its quiet
period, runs the AI chain, and this command prints what the SR says, read back from the
node's results folder with highdicom.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from ._args import EXIT_USAGE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dicomnode.config import DEFAULT_CONFIG_PATH

    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help="the node's configuration (AE title, port, data folder)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the node's address")
    parser.add_argument("--port", type=int, help="the node's port (default: from the config)")
    parser.add_argument("--data-dir", type=Path, help="the node's data folder (default: from the config)")
    parser.add_argument(
        "--label",
        default="covid19",
        choices=["non_pneumonia", "cap", "influenza", "covid19"],
        help="class of the synthetic phantom to send (default covid19)",
    )
    parser.add_argument("--seed", type=int, default=424242, help="phantom seed")
    parser.add_argument("--slices", type=int, default=60, help="number of slices")
    parser.add_argument("--size", type=int, default=256, help="rows and columns")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")


def _send(files: list[Path], host: str, port: int, called_ae: str, network_timeout_s: float) -> None:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]  # made at import time

    ae = AE(ae_title="DEMOSCU")
    ae.dimse_timeout = ae.network_timeout = network_timeout_s  # [node] network_timeout_s, as deliveries
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"the node at {host}:{port} (AE {called_ae}) refused or did not answer the association")
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"C-STORE of {path.name} failed: status {getattr(status, 'Status', None)}")
    finally:
        assoc.release()


def _job_of(db_path: Path, series_uid: str) -> dict | None:
    if not db_path.exists():
        return None
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        series = conn.execute("SELECT state, reason FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        job = conn.execute(
            "SELECT id, state, reason FROM jobs WHERE series_uid = ? ORDER BY id DESC LIMIT 1", (series_uid,)
        ).fetchone()
    finally:
        conn.close()
    if job is not None:
        return dict(job)
    if series is not None and series["state"] == "skipped":
        return {"id": None, "state": "skipped", "reason": series["reason"]}
    return None


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10": how a reader names slices (as the SR does)."""
    from ..writers.sr import slice_ranges

    return slice_ranges(numbers) or "none"


#: How the readable summary names each decision.
DECISION_WORDS = {
    "non_pneumonia": "no pneumonia",
    "cap": "community-acquired pneumonia (CAP)",
    "influenza": "influenza",
    "covid19": "COVID-19",
    "indeterminate": "indeterminate (no diagnosis is stated)",
    "out_of_domain": "cannot assess this study (out of domain)",
}


def format_summary(summary: dict) -> str:
    """The node's result summary as a few lines a person reads. It leads with the
    decision (what the SR states), never with the most probable class alone."""
    decision = summary.get("decision", summary["label"])  # summaries written before decisions existed
    lines = [f"AI decision: {DECISION_WORDS.get(decision, decision)}"]
    if summary.get("decision_reason"):
        lines.append(f"  why: {summary['decision_reason']}")
    if decision == "out_of_domain":
        lines += _out_of_domain_lines(summary)
    else:
        lines += _assessed_lines(summary, decision)
    lines.append(
        f"  lung volume: {summary['lung_volume_ml']:.0f} ml ({summary.get('lung_segmentation', '?')} segmentation)"
    )
    if summary.get("lesion_volume_ml") is not None and decision != "out_of_domain":
        lines.append(
            f"  lesions of infection (lung U-Net): {summary['lesion_volume_ml']:.1f} ml, "
            f"{100 * summary['lesion_share_of_lung']:.2f}% of the lung"
        )
    model = summary.get("model", {})
    lines.append(
        f"  model bundle: {model.get('name')} {model.get('version')} (sha256 {str(model.get('sha256', ''))[:12]}...)"
    )
    if summary.get("disclaimer"):
        lines.append(f"  {summary['disclaimer']}")
    return "\n".join(lines)


def _out_of_domain_lines(summary: dict) -> list[str]:
    """No class, no probabilities: the model cannot stand behind them (as in the SR)."""
    lines = ["  the model cannot assess this study: it differs from the model's training data; no class is claimed"]
    if "out_of_domain_score" in summary:
        lines.append(f"  out-of-domain score: {summary['out_of_domain_score']:.2f} (threshold 1.00)")
    lines += [f"  domain check {name}: {score:.2f}" for name, score in summary.get("domain_checks", {}).items()]
    return lines


def _assessed_lines(summary: dict, decision: str) -> list[str]:
    from dicomnode.writers.wording import infected_name

    lines = [f"  p({name}) = {p:.3f}" for name, p in summary["probabilities"].items()]
    lines += [f"  task {name}: {p:.3f}" for name, p in summary["tasks"].items()]
    if summary.get("thresholds"):
        lines.append("  operating points: " + ", ".join(f"{k} {v:g}" for k, v in summary["thresholds"].items()))
    if "out_of_domain_score" in summary:
        lines.append(f"  out-of-domain score: {summary['out_of_domain_score']:.2f} (threshold 1.00)")
    slices = _ranges(summary["infected_slices"])
    if decision in ("cap", "influenza", "covid19"):
        lines.append(f"  {infected_name(decision)} (InstanceNumber): {slices}")
    elif summary["infected_slices"]:
        lines.append(f"  slices flagged by the lesion locator, not a finding (InstanceNumber): {slices}")
    return lines


def _print_report(job_dir: Path, as_json: bool) -> None:
    import highdicom as hd
    from pydicom import dcmread

    summary = json.loads((job_dir / "summary.json").read_text())
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    srs = sorted((job_dir / "sr").glob("*.dcm")) if (job_dir / "sr").is_dir() else []
    if srs:
        sr = hd.sr.srread(srs[0])
        print(f"\nStructured report: {srs[0]}")
        print(f"  series: {sr.SeriesDescription!s} ({len(sr.ContentSequence)} top-level content items)")
    for kind in ("sc", "seg", "lobe_seg", "kos"):
        files = sorted((job_dir / kind).glob("*.dcm")) if (job_dir / kind).is_dir() else []
        if files:
            desc = dcmread(files[0], stop_before_pixels=True).get("SeriesDescription", "")
            print(f"  {kind.upper()}: {len(files)} object(s), series '{desc}'")


def run(args: argparse.Namespace) -> int:
    from dicomnode.config import load_config
    from dicomnode.errors import ConfigError
    from dicomnode.node import data_paths
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    try:
        cfg = load_config(args.config, check_filesystem=False)
    except ConfigError as e:
        print(f"dicomnode demo: {e}", file=sys.stderr)
        return EXIT_USAGE
    port = args.port or cfg.node.port
    paths = data_paths(args.data_dir or cfg.data_dir)

    phantom = make_phantom(args.label, args.seed, n_slices=args.slices, size_px=args.size)
    with tempfile.TemporaryDirectory(prefix="dicomnode-demo-") as tmp:
        series = write_ct_series(phantom.volume, Path(tmp), patient_name="DEMO^PHANTOM", patient_id="DEMO-0001")
        print(
            f"sending a synthetic {args.label} chest CT ({len(series.paths)} slices, "
            f"series {series.series_uid}) to {cfg.node.ae_title}@{args.host}:{port}",
            flush=True,
        )
        try:
            _send(list(series.paths), args.host, port, cfg.node.ae_title, cfg.node.network_timeout_s)
        except (RuntimeError, OSError) as e:
            print(f"dicomnode demo: {e}. Is 'dicomnode serve' running?", file=sys.stderr)
            return 1

    print(
        f"sent; the node completes the series after its quiet period "
        f"({cfg.node.quiet_seconds:g} s), then runs the AI chain...",
        flush=True,
    )
    deadline = time.monotonic() + args.timeout
    job = None
    while time.monotonic() < deadline:
        job = _job_of(paths["db"], series.series_uid)
        if job and job["state"] in ("delivering", "done", "failed", "skipped"):
            break
        time.sleep(0.5)
    else:
        print(f"dicomnode demo: no result within {args.timeout:g} s; see 'dicomnode status'", file=sys.stderr)
        return 1
    if job["state"] in ("failed", "skipped"):
        print(f"dicomnode demo: the job ended {job['state']}: {job['reason']}", file=sys.stderr)
        return 1
    print(f"job {job['id']}: {job['state']}" + (f" ({job['reason']})" if job.get("reason") else ""))
    print(f"truth of the phantom: {args.label}\n")
    _print_report(paths["results"] / str(job["id"]), args.json)
    return 0
