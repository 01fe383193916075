"""What every result message for the RIS/EHR says about its study (dicomnode.fhir and
dicomnode.hl7 share it): the DICOM study, series, key images and patient identifier, read
once from a source slice's header, and the decisions in plain words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

DECISION_TEXT = {
    "covid19": "COVID-19",
    "cap": "Community-acquired pneumonia",
    "influenza": "Influenza",
    "non_pneumonia": "No pneumonia",
    "indeterminate": "Indeterminate: no diagnosis stated",
    "out_of_domain": "Out of domain: the model cannot assess this study",
}


@dataclass(frozen=True)
class StudyRefs:
    """What the report points at: the DICOM study and series, the key images, the patient."""

    study_uid: str
    series_uid: str
    patient_id: str
    patient_id_issuer: str = ""
    accession_number: str = ""
    study_datetime: str = ""  # FHIR date or dateTime (with a zone), when known
    modality: str = "CT"
    #: (SOP Class UID, SOP Instance UID) of the key images.
    key_images: Sequence[tuple[str, str]] = field(default_factory=tuple)


def refs_from_sources(first: Any, key_images: Sequence[Any]) -> StudyRefs:
    """StudyRefs from a source slice's header and the key images' datasets."""

    def text(keyword: str) -> str:
        return str(getattr(first, keyword, "") or "")

    # The date only: a FHIR dateTime with a time needs a time zone, which DICOM rarely gives.
    date = text("StudyDate")
    when = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else ""
    return StudyRefs(
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        patient_id=text("PatientID") or "unknown",
        patient_id_issuer=text("IssuerOfPatientID"),
        accession_number=text("AccessionNumber"),
        study_datetime=when,
        modality=text("Modality") or "CT",
        key_images=tuple((str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in key_images),
    )


def multi_stage_of(summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The summary's ``multi_stage`` entry when it has a fused decision (priors analysed)."""
    multi = summary.get("multi_stage")
    return multi if isinstance(multi, Mapping) and multi.get("decision") else None


def trend_lines(multi: Mapping[str, Any]) -> list[str]:
    """One line per study date of a ``multi_stage`` entry, oldest first, in plain words."""
    lines = []
    for stage in multi.get("stages") or []:
        which = "this study" if stage.get("current") else "prior"
        probs = stage.get("probabilities") or {}
        shown = ", ".join(f"{DECISION_TEXT.get(k, k)} {100 * float(v):.1f}%" for k, v in probs.items())
        inv = stage.get("lung_involvement_percent")
        lines.append(
            f"{stage.get('study_date') or 'date unknown'} ({which}, study {stage.get('study_uid')}): "
            f"{DECISION_TEXT.get(str(stage.get('decision')), stage.get('decision'))}"
            + (f"; {shown}" if shown else "")
            + (f"; lungs involved {float(inv):.1f}%" if inv is not None else "")
        )
    return lines
