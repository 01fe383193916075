"""A plain chest radiograph (DX/CR) sent alone: the CXR model's result, a radiograph-only report.

With ``[cxr] radiographs_alone`` on, the series assembler accepts a series whose instances
are all of ``[cxr] radiograph_modalities`` (dicomnode.series); its job comes here from the
worker instead of the CT chain: the frontal images (AP/PA by View Position, or no view
given) are read (dicomnode.localizer.read_radiograph), the last is classified by the
bundle's CXR model with no CT to fuse with (pipeline.cxr), and a radiograph-only SR is
built (writers.sr_radiograph). FHIR and HL7 destinations get nothing for such a job yet
(their payloads describe a CT analysis); the worker logs it. Scale-out workers do not
take these jobs (the node's own worker runs them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pydicom
from pydicom.errors import InvalidDicomError

from .config import NodeConfig

log = logging.getLogger(__name__)

#: View Position values that are not frontal.
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLO", "RLO")


def is_radiograph_job(cfg: NodeConfig, present: Sequence[Path]) -> bool:
    """Whether a job's files are a radiograph sent alone (``[cxr] radiographs_alone`` on)."""
    if not cfg.cxr.radiographs_alone or not present:
        return False
    try:
        ds = pydicom.dcmread(present[0], stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return False
    return str(ds.get("Modality", "")).upper() in {m.upper() for m in cfg.cxr.radiograph_modalities}


def radiograph_job(
    cfg: NodeConfig, bundle: Any, job_id: int, series_uid: str, present: Sequence[Path]
) -> tuple[Mapping[str, Sequence], dict] | str:
    """(objects, summary) of a radiograph job, or why it is skipped (in words)."""
    from dicomnode.localizer import read_radiograph
    from dicomnode.writers.common import uid_maker
    from dicomnode.writers.options import WriterOptions
    from dicomnode.writers.sr_radiograph import build_radiograph_sr
    from pipeline.cxr import bundle_cxr
    from pipeline.types import InvalidInputError

    if getattr(bundle, "cxr", None) is None:
        return "a radiograph alone, but the model bundle has no CXR model (train one with 'dicomnode train cxr')"
    frontal = []
    for path in present:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError) as e:
            return f"{path.name} is not a readable DICOM file ({type(e).__name__})"
        if str(ds.get("ViewPosition", "") or "").upper() not in LATERAL_VIEWS:
            frontal.append(ds)
    if not frontal:
        return "lateral radiographs only: the CXR model reads frontal (AP/PA) chest films"
    source = frontal[-1]
    try:
        cxr = bundle_cxr(read_radiograph(source, "radiograph"), bundle, None)
    except InvalidInputError as e:
        return str(e)
    assert cxr is not None  # the bundle has a CXR model (checked above)
    log.info(
        "job %d: radiograph %s alone: %s",
        job_id,
        source.SOPInstanceUID,
        ", ".join(f"{k} {v:.3f}" for k, v in cxr.probabilities.items()),
    )
    kinds = {k for d in cfg.destinations for k in d.objects} or {"sr"}
    options = WriterOptions(uid_seed=f"{series_uid}/job-{job_id}")
    objects = {"sr": [build_radiograph_sr(cxr, source, bundle.info, options, uid_maker(options, [source]))]}
    info = bundle.info
    summary = {
        "kind": "radiograph",
        "cxr": cxr.summary(),
        "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
        "disclaimer": info.disclaimer,
    }
    return ({k: v for k, v in objects.items() if k in kinds}, summary)
