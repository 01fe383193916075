"""``dicomnode analyze INPUT --out DIR``: the AI chain on one scan, offline.

INPUT is a folder holding one DICOM CT series, or a NIfTI volume (.nii / .nii.gz).
Parses, reads, calls ``pipeline.chain.analyze``, writes, prints: the JSON summary
(``AnalysisResult.summary``) goes to stdout; with DICOM input the result objects (SR,
Grad-CAM Secondary Captures, lung SEG, KOS) are written as DICOM files under
``DIR/<kind>/``; with NIfTI input there are no source datasets to reference, so
``DIR/overlays/*.png`` hold the Grad-CAM pictures instead (none for an out-of-domain
decision, like the SC). ``DIR/result.json`` holds the summary plus the slice scores,
locator scores, timings and phenotype in both cases. The summary's ``decision`` is what
the objects state; ``label`` is only the most probable class.
A NIfTI volume is reoriented to LPS axes for the chain (as DICOM series and the training
data are) and its slices are reported by the file's own slice index. ``--save-mask``
writes the lung mask on the input's grid (origin, spacing, direction).

Exit code 0, or 2 with a one-line error on stderr for input the chain cannot use (or a
missing/corrupt model bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._args import EXIT_USAGE, whole_number

if TYPE_CHECKING:
    from pipeline.datasets.images import VoxelGrid

log = logging.getLogger(__name__)


_positive = whole_number(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", type=Path, metavar="INPUT", help="a folder with one DICOM CT series, or a NIfTI volume (.nii, .nii.gz)"
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder for the result objects (DICOM input) or overlay PNGs (NIfTI input), and result.json",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="BUNDLE_DIR",
        help="model bundle (default: the shipped demo bundle)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--save-mask",
        type=Path,
        default=None,
        metavar="FILE.nii.gz",
        help="also write the lung mask, aligned with the input volume",
    )
    p.add_argument("--top-k", type=_positive, default=3, help="top-K of the task-specific fusion (default 3)")


def _fail(message: str) -> int:
    first_line = " ".join(str(message).split())
    print(f"dicomnode analyze: error: {first_line}", file=sys.stderr)
    return EXIT_USAGE


def _series_files(folder: Path) -> list[Path]:
    """Regular files of a series folder (recursive), without DICOMDIR and hidden files."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR" and not p.name.startswith(".")
    )


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dicomnode.errors import NodeError
    from dicomnode.volume import SeriesRejected, load_series
    from pipeline.chain import analyze
    from pipeline.datasets.images import is_nifti, read_nifti_lps
    from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
    from pipeline.params import ChainParams
    from pipeline.types import InvalidInputError, ModelBundleError

    source: Path = args.input
    sources = None
    nifti_grid = None
    try:
        if source.is_dir():
            files = _series_files(source)
            if not files:
                return _fail(f"{source} holds no files; pass a folder with one DICOM CT series")
            volume, sources = load_series(files)
        elif source.is_file() and is_nifti(source):
            volume, nifti_grid = read_nifti_lps(source)
            if not nifti_grid.axial:
                log.warning(
                    "the NIfTI file's slice axis is not axial; slices are reported as z indices of "
                    "the LPS-oriented volume"
                )
        else:
            return _fail(f"{source} is neither a DICOM series folder nor a NIfTI file (.nii, .nii.gz)")
    except SeriesRejected as e:
        return _fail(f"{source}: {e}")
    except InvalidInputError as e:
        return _fail(str(e))
    log.info(
        "volume %s slices %d x %d x %d, spacing %s mm",
        "DICOM" if sources else "NIfTI",
        *volume.shape,
        tuple(round(s, 3) for s in volume.spacing_mm),
    )

    params = replace(ChainParams(), top_k=args.top_k, device=args.device)
    try:
        models = load_bundle(args.bundle or DEFAULT_BUNDLE_DIR, device=args.device)
    except ModelBundleError as e:
        return _fail(str(e))
    try:
        result = analyze(volume, models, params)
    except InvalidInputError as e:
        return _fail(f"{source}: {e}")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary(volume)
    if sources is not None:
        from dicomnode.writers import WriterOptions, build_result_objects

        try:
            objects = build_result_objects(result, volume, sources, WriterOptions())
        except NodeError as e:
            return _fail(f"the result objects cannot be built: {e}")
        summary_files = _write_objects(objects, out)
    else:
        summary_files = _write_overlays(result, volume, out)
    (out / "result.json").write_text(json.dumps(_details(result, volume, summary, summary_files), indent=2) + "\n")
    if args.save_mask is not None:
        _save_mask(result.lung_mask.mask, volume, args.save_mask, nifti_grid)
    log.info(
        "decision %s (%s; most probable class %s), %d slices flagged by the lesion locator, total %.2f s",
        summary["decision"],
        summary["decision_reason"] or "no reason given",
        summary["label"],
        len(summary["infected_slices"]),
        result.timings_s.get("total", float("nan")),
    )
    print(json.dumps(summary, indent=2))
    return 0


def _write_objects(objects: dict, out: Path) -> list[str]:
    written = []
    for kind, datasets in objects.items():
        folder = out / kind
        folder.mkdir(exist_ok=True)
        for ds in datasets:
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(str(path.relative_to(out)))
    return written


def _write_overlays(result, volume, out: Path) -> list[str]:
    from PIL import Image

    from dicomnode.writers import wording
    from dicomnode.writers.render import render_overlay

    folder = out / "overlays"
    folder.mkdir(exist_ok=True)
    written = []
    # As the Grad-CAM SC: none out of domain, and the caption states the decision.
    attention = result.attention if wording.shows_explanations(result) else ()
    for a in attention:
        caption = [
            wording.caption_line(result),
            f"Guided Grad-CAM: {a.target_class}  z={a.z_index}",
            result.model.disclaimer,
        ]
        rgb = render_overlay(volume.hu[a.z_index], a.heat, result.lung_mask.mask[a.z_index], a.regions, caption)
        path = folder / f"gradcam_z{a.z_index:04d}.png"
        Image.fromarray(rgb, mode="RGB").save(path)
        written.append(str(path.relative_to(out)))
    return written


def _details(result, volume, summary: dict, files: list[str]) -> dict[str, Any]:
    """result.json: the summary plus what a researcher wants to look at afterwards."""
    from pipeline.types import CLASS_NAMES

    scores = result.slice_scores
    located = result.infected.scores
    return {
        **summary,
        "slice_scores": [
            {"slice": volume.slice_label(int(z)), **{c: float(p) for c, p in zip(CLASS_NAMES, row, strict=True)}}
            for z, row in zip(scores.z_indices, scores.probabilities, strict=True)
        ],
        "locator_scores": [
            {"slice": volume.slice_label(z), "score": float(located[z])}
            for z in range(len(located))
            if np.isfinite(located[z])
        ],
        "explained_slices": [volume.slice_label(a.z_index) for a in result.attention],
        "phenotype": None
        if result.phenotype is None
        else {
            "region_count": result.phenotype.region_count,
            "features": {k: float(v) for k, v in result.phenotype.features.items()},
        },
        "timings_s": {k: round(float(v), 4) for k, v in result.timings_s.items()},
        "files": files,
    }


def _save_mask(mask: np.ndarray, volume, path: Path, grid: VoxelGrid | None = None) -> None:
    """The lung mask as uint8 NIfTI on the input's grid (SimpleITK x/y/z convention).

    ``grid``: the input file's own grid when the volume was reoriented on reading; the
    mask is then put back onto it (nearest neighbour: the voxels coincide exactly).
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((float(volume.spacing_mm[2]), float(volume.spacing_mm[1]), float(volume.spacing_mm[0])))
    image.SetOrigin(tuple(float(v) for v in volume.origin_mm))
    image.SetDirection(tuple(float(v) for v in volume.direction))
    if grid is not None:
        image = sitk.Resample(
            image,
            grid.size,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            grid.origin,
            grid.spacing,
            grid.direction,
            0,
            sitk.sitkUInt8,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
