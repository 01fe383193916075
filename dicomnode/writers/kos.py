"""Key Object Selection document: the slices a radiologist should look at first.

Title "Of Interest" (DCM 113000). Under a pneumonia decision it lists the infectious
slices ("COVID-19 infectious slices" only under a COVID-19 decision); otherwise, or
without any, the explained slices, else the top-scoring slice. The description says
what they are and states the decision. Out of domain no KOS is made: the model cannot
point at anything it stands behind, and the SR says so.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from pipeline.types import AnalysisResult, CTVolume

from . import codes, wording
from .common import UidMaker, contributing_equipment, device_uid, disclaimer, key_slices, series_description
from .options import WriterOptions
from .sr import slice_ranges


def build_kos(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions, uid: UidMaker
) -> Dataset | None:
    """The KOS dataset, or None for an out-of-domain decision (nothing to point at)."""
    if not wording.shows_explanations(result):
        return None
    chosen = key_slices(result)
    selected = [sources[z] for z in chosen]
    labels = slice_ranges([volume.slice_label(z) for z in chosen])
    description = f"{kos_description(result, labels)} {disclaimer(result.model)}"
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(result.model, options),
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
        contributing_equipment=contributing_equipment(result.model, options),
    )
    _drop_reference_names(kos)
    return kos


def _drop_reference_names(kos: Dataset) -> None:
    """Remove the concept name highdicom gives each referenced image ("Source").

    PS3.3 C.17.3 permits such a generic name, but TID 2010 (row 8) gives the IMAGE and
    COMPOSITE items no purpose of reference, and PixelMed's template validator, the one
    IHE AI Results testing names, rejects it; unnamed items are valid for dciodvfy too.
    """
    for item in kos.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence


def kos_description(result: AnalysisResult, labels: str) -> str:
    """What the listed slices are, then the decision (never the argmax)."""
    value = result.decision.value
    if wording.states_infected_slices(result) and result.infected.z_indices:
        what = f"{wording.upper_first(wording.infected_name(value))} found by AI (images {labels})"
    elif result.attention:
        what = f"Slices the AI explained with Grad-CAM (images {labels})"
    else:
        what = f"Slice the AI scored highest (image {labels})"
    if wording.states_infected_slices(result) and not result.infected.z_indices:
        what += "; no infectious slice found"
    decided = f"{wording.decision_line(result)}."
    if value == "indeterminate":
        decided += f" {wording.indeterminate_text(result)}"
    elif not wording.states_infected_slices(result) and result.infected.z_indices:
        decided += " The lesion locator's slices are not key images: no pneumonia is stated."
    return f"{what}. {decided}"
