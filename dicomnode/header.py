"""Header reading and file-meta encoding of received instances.

- ``parse_header``: the few identifying elements of a C-STORE's dataset bytes (up to group
  0x0028) -> ``InstanceInfo``; a small hand-written reader for the plain cases
  (``fast_header_values``), pydicom's reader for anything unusual. Every UID is checked
  against the DICOM UID grammar (``validate_uid``) before anyone may use it in a path.
- ``encode_file_meta``: preamble, 'DICM' and the File Meta Information group written in
  front of the received bytes (by hand: pydicom's writer costs as much as the write).
- ``read_file_header``: the same ``InstanceInfo`` from a stored file (the start-up rescan).

Nothing here touches the network or writes a file; ``dicomnode.store`` does the storing.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from . import __version__
from .errors import InvalidUIDError, StoreError

#: A DICOM UID (PS3.5 9.1): components of digits without leading zeros, dot-separated.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
UID_MAX_LEN = 64

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_DATASET_MISMATCH = 0xA900
STATUS_PROCESSING_FAILURE = 0xC211

#: Our implementation class UID in written file meta (2.25 + a fixed UUID-derived number).
IMPLEMENTATION_CLASS_UID = UID("2.25.173087327912880532964211486342946318915")
IMPLEMENTATION_VERSION = f"COVIDNODE{__version__}".replace(".", "")[:16]

_HEADER_LAST_TAG = 0x00280000  # every element we read lies before group 0x0028


def validate_uid(uid: object, what: str) -> str:
    """Return ``uid`` if it is a valid DICOM UID, else raise InvalidUIDError (0xC210)."""
    text = str(uid).rstrip("\x00 ") if uid is not None else ""
    if not text or len(text) > UID_MAX_LEN or not UID_PATTERN.fullmatch(text):
        shown = text[:80].encode("ascii", "backslashreplace").decode()
        raise InvalidUIDError(
            f"{what} {shown!r} is not a valid DICOM UID (digits and dots, at most {UID_MAX_LEN} characters)",
            STATUS_CANNOT_UNDERSTAND,
        )
    return text


@dataclass(frozen=True)
class InstanceInfo:
    """The few header elements the node needs about one instance (no patient data)."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str = ""
    image_type: str = ""
    body_part: str = ""
    slice_thickness: float | None = None
    orientation: str = ""
    patient_key: str = ""
    #: ImagePositionPatient, "x\\y\\z" in mm rounded to 0.01 ("" when missing or not 3 numbers).
    position: str = ""


def _text(ds: Dataset | Mapping[str, object], keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def patient_key(patient_id: str, patient_name: str) -> str:
    """A short hash that tells whether two instances are of one patient, and no more."""
    return hashlib.sha256(f"{patient_id}\x00{patient_name}".encode("utf-8", "replace")).hexdigest()[:16]


def parse_header(
    dataset_stream: BinaryIO, transfer_syntax: str, sop_class_uid: str = "", sop_uid: str = ""
) -> InstanceInfo:
    """Read the identifying elements of a dataset (no file meta) up to group 0x0028.

    Raises StoreError with 0xC210 when the bytes cannot be parsed or a UID is invalid,
    and 0xA900 when the dataset's SOP Class/Instance disagree with the request's.
    """
    ts = UID(transfer_syntax)
    try:
        fp: BinaryIO = dataset_stream
        if ts == DeflatedExplicitVRLittleEndian:
            fp = io.BytesIO(zlib.decompress(dataset_stream.read(), -zlib.MAX_WBITS))
        implicit = ts == ImplicitVRLittleEndian
        little = ts != ExplicitVRBigEndian
        values = None
        if little and hasattr(fp, "getbuffer"):
            values = fast_header_values(fp.getbuffer(), implicit)
        if values is not None:
            info = _info_from(values, str(ts))
        else:  # anything unusual: pydicom's reader, which also words the parse errors
            fp.seek(0)
            ds = read_dataset(fp, implicit, little, stop_when=lambda tag, vr, length: tag >= _HEADER_LAST_TAG)
            info = _info_from(ds, str(ts))
    except StoreError:
        raise
    except Exception as e:  # pydicom raises many types on malformed data
        raise StoreError(f"dataset cannot be parsed ({type(e).__name__}: {e})", STATUS_CANNOT_UNDERSTAND) from e
    if sop_uid and info.sop_uid != sop_uid:
        raise StoreError(
            f"dataset SOP Instance UID {info.sop_uid} differs from the request's {sop_uid}", STATUS_DATASET_MISMATCH
        )
    if sop_class_uid and info.sop_class_uid != sop_class_uid:
        raise StoreError(
            f"dataset SOP Class UID {info.sop_class_uid} differs from the request's {sop_class_uid}",
            STATUS_DATASET_MISMATCH,
        )
    return info


def _info_from(ds: Dataset | Mapping[str, object], transfer_syntax: str) -> InstanceInfo:
    """From a pydicom Dataset or from ``fast_header_values`` (same value conventions)."""
    thickness: float | None
    try:
        raw_thickness = ds.get("SliceThickness")
        thickness = float(raw_thickness) if raw_thickness not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        thickness = None
    try:
        raw_iop = ds.get("ImageOrientationPatient")
        # one value (a str here, a DSfloat from pydicom) is not an orientation
        iop = [] if isinstance(raw_iop, str) else [round(float(v), 3) + 0.0 for v in raw_iop or []]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        iop = []
    try:
        raw_ipp = ds.get("ImagePositionPatient")
        ipp = [] if isinstance(raw_ipp, str) else [round(float(v), 2) + 0.0 for v in raw_ipp or []]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        ipp = []
    return InstanceInfo(
        sop_uid=validate_uid(ds.get("SOPInstanceUID"), "SOP Instance UID"),
        series_uid=validate_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
        study_uid=validate_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
        sop_class_uid=validate_uid(ds.get("SOPClassUID"), "SOP Class UID"),
        transfer_syntax=transfer_syntax,
        modality=_text(ds, "Modality").upper(),
        image_type=_text(ds, "ImageType").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        slice_thickness=thickness,
        orientation="\\".join(f"{v:g}" for v in iop),
        patient_key=patient_key(_text(ds, "PatientID"), _text(ds, "PatientName")),
        position="\\".join(f"{v:g}" for v in ipp) if len(ipp) == 3 else "",
    )


# -- fast header reader ------------------------------------------------------------------------
# pydicom's reader costs ~0.5-0.7 ms per image for a dozen elements, a quarter of the whole
# C-STORE. This walks the little-endian element headers by hand and decodes only the
# elements we need. Whenever something is not plain (a character set other than ASCII/
# Latin-1/UTF-8 holding ASCII, non-ASCII or NUL-padded text, a VR it does not know, a
# length past the end) it returns None and the caller uses pydicom, so results and
# error messages for unusual data stay pydicom's.

_WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080060: "Modality",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00180015: "BodyPartExamined",
    0x00180050: "SliceThickness",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_SHORT_VRS = {
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"PN",
    b"SH",
    b"SL",
    b"SS",
    b"ST",
    b"TM",
    b"UI",
    b"UL",
    b"US",
}
_PLAIN_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<HHI")


class _NotPlain(Exception):
    pass


def _walk(
    buf: memoryview, pos: int, implicit: bool, out: dict[int, bytes] | None, stop_tag: int, item_end: bool
) -> int:
    """Walk elements from ``pos``; collect wanted ones into ``out`` (top level only).
    Ends at ``stop_tag``, at the end of ``buf``, or (``item_end``) after an item delimiter."""
    n = len(buf)
    while pos < n:
        if pos + 8 > n:
            raise _NotPlain
        group, elem, length = _TAG_LEN.unpack_from(buf, pos)
        tag = group << 16 | elem
        if item_end and tag == 0xFFFEE00D:
            return pos + 8
        if out is not None and tag >= stop_tag:
            return pos
        if implicit or group == 0xFFFE:
            hdr, vr = 8, b""
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _SHORT_VRS:
                hdr, length = 8, _U16.unpack_from(buf, pos + 6)[0]
            elif vr in _LONG_VRS:
                if pos + 12 > n:
                    raise _NotPlain
                hdr, length = 12, _U32.unpack_from(buf, pos + 8)[0]
            else:
                raise _NotPlain
        if length == _UNDEFINED:
            if vr not in (b"", b"SQ"):
                raise _NotPlain
            pos = _skip_sequence(buf, pos + hdr, implicit)
            continue
        if pos + hdr + length > n:
            raise _NotPlain
        if out is not None and tag in _WANTED:
            out[tag] = bytes(buf[pos + hdr : pos + hdr + length])
        pos += hdr + length
    if item_end:
        raise _NotPlain
    return pos


def _skip_sequence(buf: memoryview, pos: int, implicit: bool) -> int:
    """Past an undefined-length sequence (items of either length, to its delimiter)."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _NotPlain
        group, elem, length = _TAG_LEN.unpack_from(buf, pos)
        tag = group << 16 | elem
        if tag == 0xFFFEE0DD:
            return pos + 8
        if tag != 0xFFFEE000:
            raise _NotPlain
        if length == _UNDEFINED:
            pos = _walk(buf, pos + 8, implicit, None, 0, True)
        else:
            pos += 8 + length


def _value(tag: int, raw: bytes) -> str | list[str]:
    if not raw.isascii() or b"\x1b" in raw:
        raise _NotPlain
    text = raw.decode("ascii")
    if tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E):  # UI: NUL padded
        return text.rstrip("\x00 ")
    if "\x00" in text:
        raise _NotPlain
    parts = [p.strip() for p in text.split("\\")]
    return parts[0] if len(parts) == 1 else parts


def fast_header_values(buf: memoryview, implicit: bool) -> dict[str, str | list[str]] | None:
    """The wanted elements by keyword (str, or list of str when multi-valued), or None."""
    found: dict[int, bytes] = {}
    try:
        _walk(buf, 0, implicit, found, _HEADER_LAST_TAG, False)
        values = {_WANTED[tag]: _value(tag, raw) for tag, raw in found.items()}
    except (_NotPlain, RecursionError, struct.error):
        return None
    charset = values.get("SpecificCharacterSet", "")
    if not isinstance(charset, str) or charset not in _PLAIN_CHARSETS:
        return None
    return values


def read_file_header(path: Path) -> InstanceInfo:
    """InstanceInfo of a stored DICOM file (used when rescanning the storage folder)."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        return _info_from(ds, ts)
    except StoreError:
        raise
    except Exception as e:  # not DICOM, truncated...
        raise StoreError(f"{path.name} cannot be read ({type(e).__name__}: {e})", STATUS_CANNOT_UNDERSTAND) from e


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002."""
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(sop_class_uid: str, sop_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group for a received instance.

    Encoded by hand (PS3.10 7.1: explicit VR little endian, group length first): pydicom's
    writer costs about as much per image as the write itself, for seven elements.
    """
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _meta_element(0x0003, b"UI", _padded(sop_uid, b"\x00")),
            _meta_element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _meta_element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
            _meta_element(0x0016, b"AE", _padded(source_ae.strip(), b" ")) if source_ae.strip() else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def dataset_sha256(path: Path) -> str:
    """sha256 of a stored instance's dataset bytes, without the preamble and file meta
    (which name the sending AE): the same instance sent twice, by any sender, hashes the same."""
    raw = Path(path).read_bytes()
    start = 0
    if raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00":  # (0002,0000) group length, UL
        start = 132 + 12 + struct.unpack("<I", raw[140:144])[0]
    return hashlib.sha256(memoryview(raw)[start:]).hexdigest()
