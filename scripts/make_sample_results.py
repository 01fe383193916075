#!/usr/bin/env python
"""Make a sample of what the node sends back, for the docs and for viewer screenshots.

Builds a synthetic chest CT (pipeline.phantom), writes it as a DICOM series, reads it
back like the node does, runs the AI chain with a model bundle (default: the shipped
demo bundle), builds the result objects (SR, SC, SEG, KOS) and writes everything to
``--out``::

    <out>/ct/CT00001.dcm ...   the source series
    <out>/sr/*.dcm, sc/, seg/, kos/
    <out>/summary.json         the chain's summary (what `dicomnode analyze` prints)

and the SR as DCMTK's ``dsrdump`` prints it into docs/sr_dsrdump.txt (``--dsrdump``).

    .venv/bin/python scripts/make_sample_results.py --out data/sample_results
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.models import DEFAULT_BUNDLE_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE_DIR, help="model bundle folder")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample_results", help="output folder (replaced)")
    p.add_argument("--label", default="covid19", help="phantom class (non_pneumonia, cap, influenza, covid19)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--size", type=int, default=256, help="matrix size in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dsrdump",
        type=Path,
        default=REPO_ROOT / "docs" / "sr_dsrdump.txt",
        help="where to write dsrdump's text of the SR ('-' for standard output only)",
    )
    return p.parse_args(argv)


def load_volume(paths):
    """Read the series back as the node does (dicomnode.volume) when that module exists."""
    import pydicom

    try:
        from dicomnode.volume import load_series
    except ImportError:
        load_series = None
    if load_series is not None:
        return load_series(paths)
    return None, [pydicom.dcmread(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dicomnode.synthetic import write_ct_series
    from dicomnode.writers import WriterOptions, build_result_objects, read_findings
    from pipeline.chain import analyze
    from pipeline.models import load_bundle
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    if args.out.exists():
        shutil.rmtree(args.out)
    phantom = make_phantom(args.label, args.seed, n_slices=args.slices, size_px=args.size)
    series = write_ct_series(phantom.volume, args.out / "ct")
    volume, sources = load_volume(series.paths)
    if volume is None:  # without dicomnode.volume: the phantom volume, tagged with the written UIDs
        volume = replace(
            phantom.volume,
            slice_uids=tuple(series.sop_uids),
            slice_numbers=tuple(int(ds.InstanceNumber) for ds in sources),
        )
    bundle = load_bundle(args.bundle, args.device)
    result = analyze(volume, bundle, ChainParams(device=args.device))
    objects = build_result_objects(result, volume, sources, WriterOptions(uid_seed=f"sample-{args.seed}"))

    written = {}
    for kind, datasets in objects.items():
        folder = args.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(datasets, start=1):
            path = folder / f"{kind.upper()}{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.setdefault(kind, []).append(str(path.relative_to(args.out)))
    summary = result.summary(volume)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    findings = read_findings(objects["sr"][0]) if objects.get("sr") else None

    print(json.dumps({"out": str(args.out), "objects": written, "summary": summary}, indent=2))
    if findings is not None:
        print(f"\nSR summary text: {findings.summary}")
        how = (
            f"Made by scripts/make_sample_results.py: phantom {args.label}, seed {args.seed}, "
            f"{args.slices} slices of {args.size}x{args.size}, bundle {result.model.name} "
            f"{result.model.version}; printed by DCMTK 'dsrdump +Pl +Pu +Pt'."
        )
        _dsrdump(args.out / written["sr"][0], args.dsrdump, how)
    return 0


def _dsrdump(sr_path: Path, target: Path, how: str) -> None:
    exe = shutil.which("dsrdump")
    if exe is None:
        print("dsrdump not installed (Debian package dcmtk): no SR dump written", file=sys.stderr)
        return
    text = subprocess.run([exe, "+Pl", "+Pu", "+Pt", str(sr_path)], capture_output=True, text=True, check=True).stdout
    if str(target) != "-":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{how}\n\n{text}")
        print(f"dsrdump of the SR written to {target}")
    else:
        print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
