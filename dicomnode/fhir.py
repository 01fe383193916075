"""The analysis as FHIR R4 resources for the RIS/EHR: a transaction Bundle.

Built from a job's JSON summary (``AnalysisResult.summary``) and the study it came from,
with the ``fhir.resources`` models (R4B, the R4 technical correction; every resource
is validated as it is built). Laid out after the IHE Radiology IDR guide's resources, not
checked against its profiles:

* ``DiagnosticReport`` (status ``preliminary``: an AI result no radiologist has
  confirmed), category Radiology, code LOINC "CT Chest", the decision's reason and the
  disclaimer as its conclusion, a SNOMED CT conclusion code only under a pneumonia
  decision (never for ``indeterminate`` or ``out_of_domain``), references to the study and to
  each Observation;
* ``Observation`` per result: the decision (coded), each class probability and task
  score (percent), lung and lesion volume (mL), lesion share (percent), the number of
  infectious slices reported, the out-of-domain score; each ``derivedFrom`` the study
  and ``device`` the model;
* ``ImagingStudy``: the study and series by DICOM UID, with the key images (the
  infectious slices, by SOP Instance UID);
* ``Device``: the model bundle (name, version, sha256) and its disclaimer.
* with ``[priors]`` and a prior analysed (the summary's ``multi_stage``), one more
  ``Observation``: the multi-stage decision, its fused probabilities as components, the
  trend per date as a note, and the prior studies among ``derivedFrom`` by Study Instance
  UID.

The patient is referenced by identifier (the DICOM Patient ID and its issuer): the EHR
resolves it; no name is sent. Our own concepts use the code system
``CODE_SYSTEM`` (an OID under our 2.25 UUID arc).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from fhir.resources.R4B.bundle import Bundle

from .header import IMPLEMENTATION_CLASS_UID
from .study_refs import DECISION_TEXT, StudyRefs, multi_stage_of, trend_lines

CODE_SYSTEM = f"urn:oid:{IMPLEMENTATION_CLASS_UID}.1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
URI = "urn:ietf:rfc:3986"

#: The exam reported on (LOINC/RSNA Playbook) and the report's category (LOINC Radiology).
CT_CHEST = {"system": LOINC, "code": "24627-2", "display": "CT Chest"}
RADIOLOGY = {"system": LOINC, "code": "LP29684-5", "display": "Radiology"}
#: A pneumonia decision's SNOMED CT concept (FHIR conclusionCode). No pneumonia, indeterminate
#: and out of domain have none: their text says it, and a code would read as a finding.
DECISION_SNOMED: dict[str, dict[str, str]] = {
    "covid19": {"system": SNOMED, "code": "840539006", "display": "Disease caused by SARS-CoV-2"},
    "cap": {"system": SNOMED, "code": "385093006", "display": "Community acquired pneumonia"},
    "influenza": {"system": SNOMED, "code": "6142004", "display": "Influenza"},
}


def _uuid(seed: str) -> str:
    """A stable urn:uuid for a resource of this report (the same job gives the same ids)."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, seed)}"


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _patient(refs: StudyRefs) -> dict[str, Any]:
    ident: dict[str, Any] = {"value": refs.patient_id}
    if refs.patient_id_issuer:
        ident["system"] = f"urn:dicom:issuer:{refs.patient_id_issuer}"
    return {"identifier": ident, "type": "Patient"}


def _percent(value: float) -> dict[str, Any]:
    return {"value": round(100.0 * float(value), 3), "unit": "%", "system": UCUM, "code": "%"}


def _observations(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(key, Observation value part) of each result the summary holds."""
    decision = str(summary["decision"])
    obs: list[tuple[str, dict[str, Any]]] = []
    coding = DECISION_SNOMED.get(decision)
    value = {"coding": [coding], "text": DECISION_TEXT[decision]} if coding else {"text": DECISION_TEXT[decision]}
    obs.append(("decision", {"code": _code(CODE_SYSTEM, "DECISION", "AI decision"), "valueCodeableConcept": value}))
    for cls, p in sorted((summary.get("probabilities") or {}).items()):
        obs.append(
            (
                f"p_{cls}",
                {
                    "code": _code(CODE_SYSTEM, f"P_{cls.upper()}", f"AI probability of {cls}"),
                    "valueQuantity": _percent(p),
                },
            )
        )
    for task, p in sorted((summary.get("tasks") or {}).items()):
        obs.append(
            (
                f"task_{task}",
                {"code": _code(CODE_SYSTEM, f"TASK_{task.upper()}", f"AI score: {task}"), "valueQuantity": _percent(p)},
            )
        )
    for key, name in (("lung_volume_ml", "Lung volume"), ("lesion_volume_ml", "Lesion volume")):
        if summary.get(key) is not None:
            obs.append(
                (
                    key,
                    {
                        "code": _code(CODE_SYSTEM, key.upper(), name),
                        "valueQuantity": {"value": float(summary[key]), "unit": "mL", "system": UCUM, "code": "mL"},
                    },
                )
            )
    if summary.get("lesion_share_of_lung") is not None:
        obs.append(
            (
                "lesion_share",
                {
                    "code": _code(CODE_SYSTEM, "LESPCT", "Lesion share of the lung"),
                    "valueQuantity": _percent(summary["lesion_share_of_lung"]),
                },
            )
        )
    if summary.get("mosmed_grade"):
        grade = str(summary["mosmed_grade"])
        obs.append(
            (
                "severity_grade",
                {
                    "code": _code(CODE_SYSTEM, "CTGRADE", "CT severity grade (MosMedData)"),
                    "valueCodeableConcept": _code(CODE_SYSTEM, grade.replace("-", ""), grade),
                },
            )
        )
    obs.append(
        (
            "infected_slices",
            {
                "code": _code(CODE_SYSTEM, "NINFECTED", "Infectious slices reported"),
                "valueInteger": len(summary.get("infected_slices") or []),
            },
        )
    )
    obs.append(
        (
            "out_of_domain_score",
            {
                "code": _code(CODE_SYSTEM, "OODSCORE", "Out-of-domain score (1 = threshold)"),
                "valueQuantity": {
                    "value": float(summary["out_of_domain_score"]),
                    "unit": "1",
                    "system": UCUM,
                    "code": "1",
                },
            },
        )
    )
    return obs


def _multi_stage(summary: Mapping[str, Any], derived_from: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """With priors ([priors]): the multi-stage decision, its fused probabilities as
    components, the trend per date as a note, and the prior studies among derivedFrom
    (by Study Instance UID, a logical reference: the EHR may not hold them)."""
    multi = multi_stage_of(summary)
    if multi is None:
        return []
    decision = str(multi["decision"])
    coding = DECISION_SNOMED.get(decision)
    value = {"coding": [coding], "text": DECISION_TEXT[decision]} if coding else {"text": DECISION_TEXT[decision]}
    priors = [s for s in multi.get("stages") or [] if not s.get("current")]
    return [
        (
            "multi_stage",
            {
                "code": _code(CODE_SYSTEM, "MSDECISION", "AI multi-stage decision"),
                "valueCodeableConcept": value,
                "component": [
                    {
                        "code": _code(CODE_SYSTEM, f"P_{cls.upper()}", f"AI fused probability of {cls}"),
                        "valueQuantity": _percent(p),
                    }
                    for cls, p in sorted((multi.get("probabilities") or {}).items())
                ],
                "note": [{"text": f"{multi.get('decision_reason', '')} Trend: " + " | ".join(trend_lines(multi))}],
                "derivedFrom": [*derived_from, *(_study_identifier(str(s["study_uid"])) for s in priors)],
            },
        )
    ]


def _cxr(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The CXR branch (summary ``cxr``): one Observation, the fused decision (or the text
    "not fused") with the radiograph model's and the fused probabilities as components,
    the fusion's reason and the images read (the localizer's SOP Instance UIDs) as a note."""
    cxr = summary.get("cxr")
    if not cxr:
        return []
    fused = cxr.get("fused_decision")
    coding = DECISION_SNOMED.get(str(fused))
    if fused:
        value = {"coding": [coding], "text": DECISION_TEXT[fused]} if coding else {"text": DECISION_TEXT[fused]}
    else:
        value = {"text": "Not fused: the CT decision stands (see the note)"}
    components = [
        {
            "code": _code(CODE_SYSTEM, f"XP_{cls.upper()}", f"AI radiograph probability of {cls}"),
            "valueQuantity": _percent(p),
        }
        for cls, p in (cxr.get("probabilities") or {}).items()
    ] + [
        {
            "code": _code(CODE_SYSTEM, f"FP_{cls.upper()}", f"AI CT and radiograph fused probability of {cls}"),
            "valueQuantity": _percent(p),
        }
        for cls, p in (cxr.get("fused_probabilities") or {}).items()
    ]
    images = ", ".join(cxr.get("images") or []) or "none"
    return [
        (
            "cxr",
            {
                "code": _code(CODE_SYSTEM, "FUSDECISION", "AI CT and radiograph fused decision"),
                "valueCodeableConcept": value,
                "component": components,
                "note": [{"text": f"{cxr.get('reason', '')}. Radiograph read: {cxr.get('source')} {images}."}],
            },
        )
    ]


def _device(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model bundle as a Device: its sha256 identifies it."""
    model = summary["model"]
    return {
        "resourceType": "Device",
        "identifier": [{"system": URI, "value": f"urn:sha256:{model['sha256']}"}],
        "deviceName": [{"name": f"{model['name']} {model['version']}", "type": "model-name"}],
        "version": [{"value": str(model["version"])}],
        "note": [{"text": str(summary.get("disclaimer") or "")}] if summary.get("disclaimer") else [],
    }


def _imaging_study(refs: StudyRefs, subject: dict[str, Any]) -> dict[str, Any]:
    """The source study with its series and the key images."""
    series: dict[str, Any] = {"uid": refs.series_uid, "modality": {"system": DCM, "code": refs.modality}}
    if refs.key_images:
        series["instance"] = [
            {"uid": sop_uid, "sopClass": {"system": URI, "code": f"urn:oid:{sop_class}"}}
            for sop_class, sop_uid in refs.key_images
        ]
    accession = (
        [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": refs.accession_number,
            }
        ]
        if refs.accession_number
        else []
    )
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": subject,
        "identifier": [{"system": URI, "value": f"urn:oid:{refs.study_uid}"}] + accession,
        "series": [series],
    }


def _observation_entries(
    summary: Mapping[str, Any], job_key: str, common: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """One preliminary Observation per result (``common``: subject, derivedFrom, device, time)."""
    out = []
    parts = [*_observations(summary), *_multi_stage(summary, common["derivedFrom"]), *_cxr(summary)]
    for key, part in parts:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "preliminary",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
            **common,
            **part,
        }
        out.append((_uuid(f"{job_key}/obs/{key}"), resource))
    return out


def _study_identifier(study_uid: str) -> dict[str, Any]:
    """A logical reference to an ImagingStudy by its Study Instance UID."""
    return {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}


def _transaction(entries: Sequence[tuple[str, dict[str, Any]]], job_key: str) -> dict[str, Any]:
    """The transaction Bundle: every entry a POST; the report's a conditional create."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": res,
                "request": {
                    "method": "POST",
                    "url": res["resourceType"],
                    **(
                        {"ifNoneExist": f"identifier={CODE_SYSTEM}|{job_key}"}
                        if res["resourceType"] == "DiagnosticReport"
                        else {}
                    ),
                },
            }
            for url, res in entries
        ],
    }


def build_report_bundle(
    summary: Mapping[str, Any], refs: StudyRefs, job_key: str, issued: datetime | None = None
) -> Bundle:
    """The transaction Bundle of one analysed series (validated by fhir.resources).

    ``job_key`` makes the resource ids stable: sending the same job again creates the
    same ``urn:uuid``s, and the conditional creates (``ifNoneExist`` on the report's
    identifier) keep a retried POST from making a second report.
    """
    issued = issued or datetime.now(timezone.utc)
    subject = _patient(refs)
    ids = {name: _uuid(f"{job_key}/{name}") for name in ("report", "study", "device")}
    study_ref = {"reference": ids["study"]}
    when = {"effectiveDateTime": refs.study_datetime} if refs.study_datetime else {}
    common = {"subject": subject, "derivedFrom": [study_ref], "device": {"reference": ids["device"]}, **when}
    observations = _observation_entries(summary, job_key, common)
    decision = str(summary["decision"])
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "identifier": [{"system": CODE_SYSTEM, "value": job_key}],
        "category": [{"coding": [RADIOLOGY]}],
        "code": {"coding": [CT_CHEST], "text": "CT Chest (AI analysis)"},
        "subject": subject,
        "issued": issued.isoformat(timespec="seconds"),
        **when,
        "imagingStudy": [study_ref],
        "result": [{"reference": u} for u, _ in observations],
        "conclusion": f"{summary.get('decision_reason', DECISION_TEXT[decision])} "
        f"{summary.get('disclaimer', '')}".strip(),
    }
    if decision in DECISION_SNOMED:
        report["conclusionCode"] = [{"coding": [DECISION_SNOMED[decision]]}]
    entries = [
        (ids["device"], _device(summary)),
        (ids["study"], _imaging_study(refs, subject)),
        *observations,
        (ids["report"], report),
    ]
    return Bundle.model_validate(_transaction(entries, job_key))


class FhirSendError(Exception):
    """A POST that did not succeed (the delivery retries it)."""


def post_bundle(url: str, body: bytes, timeout_s: float, token: str = "", ca_file: str | None = None) -> int:
    """POST a transaction Bundle to the FHIR server at ``url``; returns the HTTP status.

    Raises FhirSendError for anything but a 2xx answer, naming the status and the start of
    the server's OperationOutcome (never the token).
    """
    import ssl
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace").replace("\n", " ")
        raise FhirSendError(f"HTTP {e.code} from {url}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FhirSendError(f"cannot reach {url}: {reason}") from e
