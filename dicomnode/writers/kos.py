"""Key Object Selection document: the slices a radiologist should look at first.

Title "Of Interest" (DCM 113000); lists the COVID-19 infectious slices, else the
explained slices, else the top-scoring slice; the description says what they are.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from pipeline.types import AnalysisResult, CTVolume

from . import codes
from .common import CLASS_DISPLAY, UidMaker, disclaimer, key_slices, series_description
from .options import WriterOptions
from .sr import slice_ranges


def build_kos(result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset],
              options: WriterOptions, uid: UidMaker) -> Dataset:
    chosen = key_slices(result)
    selected = [sources[z] for z in chosen]
    labels = slice_ranges([volume.slice_label(z) for z in chosen])
    if result.infected.z_indices:
        what = f"COVID-19 infectious slices found by AI (images {labels})"
    elif result.attention:
        what = f"Slices the AI explained with Grad-CAM (images {labels}); no infectious slice found"
    else:
        what = f"Slice the AI scored highest (image {labels}); no infectious slice found"
    description = (f"{what}. AI result: {CLASS_DISPLAY[result.case_scores.label]} "
                   f"({100 * result.case_scores.probabilities[result.case_scores.label]:.1f}%). "
                   f"{disclaimer(result.model)}")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(generate_uid(entropy_srcs=[options.product_name, options.product_version, result.model.sha256])),
        name=f"{options.product_name} {options.product_version}",
        manufacturer_name=options.manufacturer,
        model_name=f"{result.model.name} {result.model.version}",
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.OF_INTEREST,
        referenced_objects=selected,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=device,
        ),
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=list(sources),
        content=content,
        series_instance_uid=uid("kos-series"),
        series_number=options.kos_series_number,
        sop_instance_uid=uid("kos-instance"),
        instance_number=1,
        manufacturer=options.manufacturer,
        institution_name=options.institution_name,
        series_description=series_description("key images", result.model),
    )
    return kos
