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

``--prior PRIOR`` (repeatable): earlier scans of the same patient, analysed with the same
bundle; the summary gains ``multi_stage`` (the trend per date and the fused decision of
pipeline/stages.py, ``--multi-stage-rule``), and the SR the trend (as the node makes it
with ``[priors]``).

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

from pipeline.stages import MULTI_STAGE_RULES

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
    p.add_argument(
        "--prior",
        type=Path,
        action="append",
        default=[],
        metavar="PRIOR",
        help="an earlier scan of the same patient (DICOM folder or NIfTI; repeatable): each is analysed too and "
        "the summary gains multi_stage, the trend per date and the fused decision (pipeline/stages.py); "
        "DICOM's Study Date orders the scans, a NIfTI's date is unknown",
    )
    p.add_argument(
        "--localizer",
        type=Path,
        default=None,
        metavar="DICOM_FILE",
        help="the study's CT localizer (or a chest radiograph), a DICOM file: the bundle's CXR model reads it and "
        "the summary gains cxr, its scores fused with the CT's (pipeline/cxr.py; needs a bundle with a CXR model)",
    )
    p.add_argument(
        "--multi-stage-rule",
        default="mean",
        choices=MULTI_STAGE_RULES,
        help="how the dates are fused (default mean)",
    )


def _with_localizer(path: Path | None, result, models) -> tuple[Any, tuple] | str:
    """``result`` with its CXR branch on the ``--localizer`` file, and that file's dataset
    for the SR; ``result`` unchanged without the option; a str says what is wrong."""
    if path is None:
        return result, ()
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicomnode.localizer import read_radiograph
    from pipeline.cxr import with_cxr
    from pipeline.types import InvalidInputError

    if getattr(models, "cxr", None) is None:
        return f"--localizer: the bundle {models.path} has no CXR model (train one with 'dicomnode train cxr')"
    try:
        ds = pydicom.dcmread(path)
        radiograph = read_radiograph(
            ds, "localizer" if "LOCALIZER" in list(ds.get("ImageType") or []) else "radiograph"
        )
    except (InvalidDicomError, OSError, InvalidInputError, AttributeError) as e:
        return f"--localizer {path}: not a readable projection image ({e})"
    return with_cxr(result, radiograph, models), (ds,)


def _fail(message: str) -> int:
    first_line = " ".join(str(message).split())
    print(f"dicomnode analyze: error: {first_line}", file=sys.stderr)
    return EXIT_USAGE


def _series_files(folder: Path) -> list[Path]:
    """Regular files of a series folder (recursive), without DICOMDIR and hidden files."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR" and not p.name.startswith(".")
    )


def _load(source: Path):
    """(volume, DICOM sources or None, NIfTI grid or None) of an input; a str says why not."""
    from dicomnode.volume import SeriesRejected, load_series
    from pipeline.datasets.images import is_nifti, read_nifti_lps
    from pipeline.types import InvalidInputError

    try:
        if source.is_dir():
            files = _series_files(source)
            if not files:
                return f"{source} holds no files; pass a folder with one DICOM CT series"
            volume, sources = load_series(files)
            return volume, sources, None
        if source.is_file() and is_nifti(source):
            volume, nifti_grid = read_nifti_lps(source)
            if not nifti_grid.axial:
                log.warning(
                    "the NIfTI file's slice axis is not axial; slices are reported as z indices of "
                    "the LPS-oriented volume"
                )
            return volume, None, nifti_grid
        return f"{source} is neither a DICOM series folder nor a NIfTI file (.nii, .nii.gz)"
    except SeriesRejected as e:
        return f"{source}: {e}"
    except InvalidInputError as e:
        return str(e)


def _trend(args: argparse.Namespace, summary: dict, sources, models, params):
    """With ``--prior``: each prior analysed, the dates fused (pipeline.stages); a
    writers.trend.Trend, or a str saying why not."""
    from dicomnode.priors import parse_da
    from dicomnode.writers.trend import Trend
    from pipeline.chain import analyze
    from pipeline.stages import fuse_stages, stage_from_summary
    from pipeline.types import InvalidInputError

    def date_of(datasets):
        return None if not datasets else parse_da(getattr(datasets[0], "StudyDate", ""))

    def uid_of(datasets, path: Path) -> str:
        return str(datasets[0].StudyInstanceUID) if datasets else path.name  # a NIfTI: its file name

    stages, evidence = [stage_from_summary(summary, uid_of(sources, args.input), date_of(sources), True)], []
    for path in args.prior:
        loaded = _load(path)
        if isinstance(loaded, str):
            return f"prior {loaded}"
        volume, prior_sources, _ = loaded
        try:
            result = analyze(volume, models, params)
        except InvalidInputError as e:
            return f"prior {path}: {e}"
        stages.append(stage_from_summary(result.summary(volume), uid_of(prior_sources, path), date_of(prior_sources)))
        evidence += [ds for ds in prior_sources or [] if sources and ds.StudyInstanceUID != sources[0].StudyInstanceUID]
    return Trend(fuse_stages(stages, args.multi_stage_rule, models.operating_points), tuple(evidence))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dicomnode.errors import NodeError
    from pipeline.chain import analyze
    from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
    from pipeline.params import ChainParams
    from pipeline.types import InvalidInputError, ModelBundleError

    source: Path = args.input
    loaded = _load(source)
    if isinstance(loaded, str):
        return _fail(loaded)
    volume, sources, nifti_grid = loaded
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
    paired = _with_localizer(args.localizer, result, models)
    if isinstance(paired, str):
        return _fail(paired)
    result, cxr_sources = paired

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary(volume)
    trend = _trend(args, summary, sources, models, params) if args.prior else None
    if isinstance(trend, str):
        return _fail(trend)
    if trend is not None:
        summary["multi_stage"] = trend.summary
    if sources is not None:
        from dicomnode.writers import WriterOptions, build_result_objects

        try:
            objects = build_result_objects(result, volume, sources, WriterOptions(trend=trend, cxr_sources=cxr_sources))
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
