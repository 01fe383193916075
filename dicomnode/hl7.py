"""The analysis as an HL7 v2.5 ORU^R01 message, sent over MLLP, for sites without FHIR.

The same content as the FHIR report (dicomnode.fhir): one OBX per result (the decision
coded, each class probability and task score in percent, lung and lesion volume in mL,
the lesion share, the number of infectious slices, the out-of-domain score), the
decision's reason and the disclaimer as text, the Study Instance UID; the order (OBR)
names the exam (LOINC 24627-2 "CT Chest") and the accession number, result status P
(preliminary: no radiologist confirmed it). The message is assembled as ER7, then parsed
and validated against the v2.5 ORU_R01 structure by ``hl7apy``; the receiver's
acknowledgement is parsed by hl7apy as well: AA (or CA) is success, anything else (AE,
AR, no answer, a broken frame) is retried by the delivery like a refused C-STORE.
"""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timezone
from typing import Any, Mapping

from .study_refs import DECISION_TEXT, StudyRefs, multi_stage_of, trend_lines

#: MLLP framing (HL7 v2 Minimal Lower Layer Protocol).
START, END = b"\x0b", b"\x1c\x0d"
OUR_CODES = "99COVIDNODE"
UCUM = "UCUM"
PERCENT = f"%^percent^{UCUM}"


class Hl7Error(Exception):
    """A message that could not be built, or a send that did not end in AA."""


def _escape(text: str) -> str:
    """ER7 escaping of the delimiters |^~\\& in free text, by hl7apy's TX data type (and no
    segment breaks: CR and LF become spaces)."""
    from hl7apy.v2_5 import TX

    return str(TX(text.replace("\r", " ").replace("\n", " ")).to_er7())


def _person_name(dicom_name: str) -> str:
    """A DICOM PN's first (alphabetic) group as XPN: its ^ components are HL7's too."""
    first = dicom_name.split("=")[0]
    return "^".join(_escape(part) for part in first.split("^"))


def destination_tag(key: str) -> str:
    """A short, stable tag of an HL7 destination: each gets its own message (its own
    MSH-5/6), named ``hl7-<job>-<tag>`` among the job's objects, MSH-10 ``<job>-<tag>``."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:6]


def message_control_id(message: str) -> str:
    """MSH-10 of an ER7 message."""
    fields = message.split("\r", 1)[0].split("|")
    if len(fields) < 10 or not fields[0] == "MSH":
        raise Hl7Error("not an HL7 v2 message (no MSH segment)")
    return fields[9]


def _obx_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(value type, observation id, value, units) per OBX, in the FHIR report's order."""
    decision = str(summary["decision"])
    rows = [
        ("CE", f"DECISION^AI decision^{OUR_CODES}", f"{decision}^{_escape(DECISION_TEXT[decision])}^{OUR_CODES}", "")
    ]
    for cls, p in sorted((summary.get("probabilities") or {}).items()):
        rows.append(
            ("NM", f"P_{cls.upper()}^AI probability of {cls}^{OUR_CODES}", f"{100 * float(p):.3f}", f"%^percent^{UCUM}")
        )
    for task, p in sorted((summary.get("tasks") or {}).items()):
        rows.append(
            ("NM", f"TASK_{task.upper()}^AI score {task}^{OUR_CODES}", f"{100 * float(p):.3f}", f"%^percent^{UCUM}")
        )
    for key, name in (("lung_volume_ml", "Lung volume"), ("lesion_volume_ml", "Lesion volume")):
        if summary.get(key) is not None:
            rows.append(
                ("NM", f"{key.upper()}^{name}^{OUR_CODES}", f"{float(summary[key]):.1f}", f"mL^milliliter^{UCUM}")
            )
    if summary.get("lesion_share_of_lung") is not None:
        rows.append(
            (
                "NM",
                f"LESPCT^Lesion share of the lung^{OUR_CODES}",
                f"{100 * float(summary['lesion_share_of_lung']):.3f}",
                f"%^percent^{UCUM}",
            )
        )
    if summary.get("mosmed_grade"):
        grade = str(summary["mosmed_grade"])
        rows.append(
            (
                "CE",
                f"CTGRADE^CT severity grade (MosMedData)^{OUR_CODES}",
                f"{grade.replace('-', '')}^{grade}^{OUR_CODES}",
                "",
            )
        )
    rows.append(
        ("NM", f"NINFECTED^Infectious slices reported^{OUR_CODES}", str(len(summary.get("infected_slices") or [])), "")
    )
    rows.append(
        (
            "NM",
            f"OODSCORE^Out-of-domain score (1 = threshold)^{OUR_CODES}",
            f"{float(summary['out_of_domain_score']):.4f}",
            f"1^unity^{UCUM}",
        )
    )
    rows += _multi_stage_rows(summary)
    rows += _cxr_rows(summary)
    text = f"{summary.get('decision_reason') or DECISION_TEXT[decision]} {summary.get('disclaimer') or ''}".strip()
    rows.append(("TX", f"REPORT^AI report text^{OUR_CODES}", _escape(text), ""))
    return rows


def _multi_stage_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """With priors ([priors]): the multi-stage decision and the trend per date."""
    multi = multi_stage_of(summary)
    if multi is None:
        return []
    decision = str(multi["decision"])
    text = f"{multi.get('decision_reason', '')} Trend: " + " | ".join(trend_lines(multi))
    return [
        (
            "CE",
            f"MSDECISION^AI multi-stage decision^{OUR_CODES}",
            f"{decision}^{_escape(DECISION_TEXT[decision])}^{OUR_CODES}",
            "",
        ),
        ("TX", f"MSTREND^AI multi-stage trend^{OUR_CODES}", _escape(text), ""),
    ]


def _cxr_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The CXR branch (summary ``cxr``): the radiograph model's probabilities, the fused
    ones and the fused decision (when fused), and what was read (the localizer's SOP
    Instance UIDs) with the fusion's reason."""
    cxr = summary.get("cxr")
    if not cxr:
        return []
    rows = [
        ("NM", f"XP_{cls.upper()}^AI radiograph probability of {cls}^{OUR_CODES}", f"{100 * float(p):.3f}", PERCENT)
        for cls, p in (cxr.get("probabilities") or {}).items()
    ]
    for cls, p in (cxr.get("fused_probabilities") or {}).items():
        rows.append(
            (
                "NM",
                f"FP_{cls.upper()}^AI CT and radiograph fused probability of {cls}^{OUR_CODES}",
                f"{100 * p:.3f}",
                PERCENT,
            )
        )
    fused = cxr.get("fused_decision")
    if fused:
        value = f"{fused}^{_escape(DECISION_TEXT[fused])}^{OUR_CODES}"
        rows.append(("CE", f"FUSDECISION^AI CT and radiograph fused decision^{OUR_CODES}", value, ""))
    text = f"{cxr.get('reason', '')}. Images read: {', '.join(cxr.get('images') or []) or 'none'}"
    rows.append(("TX", f"CXRNOTE^AI radiograph (CT localizer) branch^{OUR_CODES}", _escape(text), ""))
    return rows


def build_oru(
    summary: Mapping[str, Any],
    refs: StudyRefs,
    patient_name: str,
    control_id: str,
    receiving_application: str = "",
    receiving_facility: str = "",
    sending_facility: str = "",
    at: datetime | None = None,
) -> str:
    """The ORU^R01 message (ER7, segments separated by CR), validated by hl7apy."""
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    at = at or datetime.now(timezone.utc)
    stamp = at.strftime("%Y%m%d%H%M%S")
    study_date = refs.study_datetime.replace("-", "")[:8]
    issuer = f"^^^{_escape(refs.patient_id_issuer)}" if refs.patient_id_issuer else ""
    accession = _escape(refs.accession_number)
    segments = [
        f"MSH|^~\\&|COVIDNODE|{_escape(sending_facility)}|{_escape(receiving_application)}|"
        f"{_escape(receiving_facility)}|{stamp}||ORU^R01^ORU_R01|{_escape(control_id)}|P|2.5",
        f"PID|1||{_escape(refs.patient_id)}{issuer}||{_person_name(patient_name) or 'UNKNOWN'}",
        f"OBR|1||{accession}|24627-2^CT Chest^LN|||{study_date}|||||||||||{accession}||||{stamp}||CT|P",
    ]
    for i, (vtype, ident, value, units) in enumerate(_obx_rows(summary), start=1):
        segments.append(f"OBX|{i}|{vtype}|{ident}||{value}|{units}|||||P|||{study_date}")
    segments.append(f"OBX|{len(segments) - 2}|ST|110180^Study Instance UID^DCM||{refs.study_uid}||||||P")
    er7 = "\r".join(segments)
    try:
        message = parse_message(er7, find_groups=True)
        message.validate()
    except HL7apyException as e:
        raise Hl7Error(f"the ORU^R01 message does not validate: {e}") from e
    return str(message.to_er7())


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


def read_frame(sock: socket.socket, limit: int = 1 << 20) -> str:
    """One MLLP frame's message from ``sock`` (Hl7Error on a broken or oversized frame)."""
    data = b""
    while END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise Hl7Error("the receiver closed the connection before a whole acknowledgement")
        data += chunk
        if len(data) > limit:
            raise Hl7Error("the receiver's answer is not an MLLP frame (too long)")
    if not data.startswith(START):
        raise Hl7Error("the receiver's answer does not start an MLLP frame")
    return data[1 : data.index(END)].decode("utf-8", "replace")


def acknowledgement_code(ack: str, control_id: str) -> str:
    """MSA-1 of an ACK to ``control_id`` (Hl7Error when it answers another message)."""
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    try:
        msg = parse_message(ack.replace("\n", "\r"), find_groups=False)
        code = str(msg.msa.msa_1.value)
        answered = str(msg.msa.msa_2.value)
    except (HL7apyException, AttributeError, IndexError) as e:
        raise Hl7Error(f"the acknowledgement cannot be read: {e}") from e
    if answered != control_id:
        raise Hl7Error(f"the acknowledgement answers message {answered!r}, not {control_id!r}")
    return code


def send_mllp(
    host: str, port: int, message: str, control_id: str, timeout_s: float, tls: ssl.SSLContext | None = None
) -> None:
    """Send one message and wait for its ACK; Hl7Error unless it is AA or CA."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
            sock.sendall(frame(message))
            code = acknowledgement_code(read_frame(sock), control_id)
    except OSError as e:
        raise Hl7Error(f"cannot reach {host}:{port}: {e}") from e
    if code not in ("AA", "CA"):
        raise Hl7Error(f"the receiver answered {code} (not accepted)")
