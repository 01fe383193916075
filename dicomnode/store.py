"""Instance store: received bytes -> a durable DICOM file, and nothing else.

Layout: ``<storage>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

- Every UID is checked against the DICOM UID grammar (digits and dots, no leading zero in
  a component, at most 64 characters) *before* it becomes a path part, so no received
  value can name a file outside the storage folder ("../../x" and "1.2/../3" are not UIDs).
- A write is atomic and durable: a temp file in the target folder, write, flush, fsync,
  ``os.replace``, fsync of the folder. A reader (or a restart) sees the old file or the
  whole new one, never half of one; the caller answers success only after ``store``
  returned.
- Duplicates (an instance with a SOP Instance UID already stored) replace the stored file:
  the last one received wins, as a PACS re-send is meant to correct the earlier copy.
- Free-disk guard: below ``min_free_mb`` the store refuses (``DiskFullError``, status
  0xA700) instead of filling the disk that the database also lives on.

Only the header elements the node needs are parsed (``parse_header``): the pixel data are
never decoded here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import secrets
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from . import __version__
from .errors import DiskFullError, InvalidUIDError, StoreError

log = logging.getLogger(__name__)

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
_TMP_SUFFIX = ".tmp"


def validate_uid(uid: object, what: str) -> str:
    """Return ``uid`` if it is a valid DICOM UID, else raise InvalidUIDError (0xC210)."""
    text = str(uid).rstrip("\x00 ") if uid is not None else ""
    if not text or len(text) > UID_MAX_LEN or not UID_PATTERN.fullmatch(text):
        shown = text[:80].encode("ascii", "backslashreplace").decode()
        raise InvalidUIDError(f"{what} {shown!r} is not a valid DICOM UID (digits and dots, "
                              f"at most {UID_MAX_LEN} characters)", STATUS_CANNOT_UNDERSTAND)
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


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def patient_key(patient_id: str, patient_name: str) -> str:
    """A short hash that tells whether two instances are of one patient, and no more."""
    return hashlib.sha256(f"{patient_id}\x00{patient_name}".encode("utf-8", "replace")).hexdigest()[:16]


def parse_header(dataset_stream: BinaryIO, transfer_syntax: str, sop_class_uid: str = "",
                 sop_uid: str = "") -> InstanceInfo:
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
        raise StoreError(f"dataset SOP Instance UID {info.sop_uid} differs from the request's {sop_uid}",
                         STATUS_DATASET_MISMATCH)
    if sop_class_uid and info.sop_class_uid != sop_class_uid:
        raise StoreError(f"dataset SOP Class UID {info.sop_class_uid} differs from the request's "
                         f"{sop_class_uid}", STATUS_DATASET_MISMATCH)
    return info


def _info_from(ds: "Dataset | dict[str, object]", transfer_syntax: str) -> InstanceInfo:
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
    0x00080005: "SpecificCharacterSet", 0x00080008: "ImageType", 0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID", 0x00080060: "Modality", 0x00100010: "PatientName",
    0x00100020: "PatientID", 0x00180015: "BodyPartExamined", 0x00180050: "SliceThickness",
    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
              b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_PLAIN_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"}
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<HHI")


class _NotPlain(Exception):
    pass


def _walk(buf: memoryview, pos: int, implicit: bool, out: dict[int, bytes] | None, stop_tag: int,
          item_end: bool) -> int:
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
            vr = bytes(buf[pos + 4:pos + 6])
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
            out[tag] = bytes(buf[pos + hdr:pos + hdr + length])
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


def fast_header_values(buf: memoryview, implicit: bool) -> dict[str, object] | None:
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
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _padded(sop_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
        _meta_element(0x0016, b"AE", _padded(source_ae.strip(), b" ")) if source_ae.strip() else b"",
    ))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_sha256(path: Path) -> str:
    """sha256 of a stored instance's dataset bytes, without the preamble and file meta
    (which name the sending AE): the same instance sent twice, by any sender, hashes the same."""
    raw = Path(path).read_bytes()
    start = 0
    if raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00":  # (0002,0000) group length, UL
        start = 132 + 12 + struct.unpack("<I", raw[140:144])[0]
    return hashlib.sha256(memoryview(raw)[start:]).hexdigest()


class InstanceStore:
    """Durable, atomic storage of received instances under ``root``."""

    def __init__(self, root: Path | str, min_free_mb: int = 500) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = int(min_free_mb) * 1024 * 1024
        self._free_checked = -1e9
        self._free_bytes = 0  # at the last statvfs, less what was written since
        self._dirs_known: set[Path] = set()
        self._lock = threading.Lock()
        #: Instances received again: same content (a re-send) or different content
        #: (the earlier file is replaced; logged, as the PACS may have sent a correction).
        self.duplicates = {"identical": 0, "different": 0}

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The path (relative to root) an instance is stored at; validates every UID."""
        return Path(validate_uid(study_uid, "Study Instance UID"),
                    validate_uid(series_uid, "Series Instance UID"),
                    validate_uid(sop_uid, "SOP Instance UID") + ".dcm")

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        path = (self.root / self.relative_path(study_uid, series_uid, sop_uid)).resolve()
        # Belt and braces: the UID grammar already excludes separators and '..'.
        if self.root not in path.parents:
            raise InvalidUIDError(f"refusing to write outside the storage folder: {path}",
                                  STATUS_CANNOT_UNDERSTAND)
        return path

    def free_bytes(self) -> int:
        """Free space of the storage folder's file system now (statvfs)."""
        st = os.statvfs(self.root)
        return int(st.f_bavail * st.f_frsize)

    def check_free_space(self, need_bytes: int = 0) -> None:
        """Raise DiskFullError unless ``need_bytes`` fit and leave the guard's reserve free.

        The free space is measured (statvfs) at most once a second and every write since is
        subtracted from it, so a fast sender cannot overrun the reserve between two
        measurements; the reserve (``min_free_mb``) stays for the database and results.
        """
        if self.min_free_bytes <= 0:
            return
        with self._lock:
            t = time.monotonic()
            if t - self._free_checked > 1.0 or self._free_bytes - need_bytes < self.min_free_bytes:
                st = os.statvfs(self.root)
                self._free_bytes = st.f_bavail * st.f_frsize
                self._free_checked = t
            if self._free_bytes - need_bytes < self.min_free_bytes:
                raise DiskFullError(f"free disk space in {self.root} would fall below the "
                                    f"{self.min_free_bytes // 2**20} MB reserve; free space or lower [node] "
                                    f"min_free_mb", STATUS_OUT_OF_RESOURCES)
            self._free_bytes -= need_bytes

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._dirs_known:
            return
        with self._lock:
            missing = []
            probe = folder
            while not probe.exists() and probe != self.root:
                missing.append(probe)
                probe = probe.parent
            folder.mkdir(parents=True, exist_ok=True)
            # A new folder entry is durable only once its parent is fsynced.
            for created in reversed(missing):
                fsync_dir(created.parent)
            self._dirs_known.add(folder)

    def store(self, info: InstanceInfo, header: bytes, dataset: bytes | memoryview) -> Path:
        """Write ``header`` (preamble + file meta) and ``dataset`` durably; return the path.

        Raises DiskFullError (0xA700) when space is short, InvalidUIDError (0xC210) for a
        bad UID, StoreError (0xA700) for other OS errors. Never leaves a partial file.
        """
        self.check_free_space(len(header) + len(dataset))
        target = self.path_for(info.study_uid, info.series_uid, info.sop_uid)
        if target.exists():
            self._note_duplicate(info, target, header, dataset)
        tmp = target.parent / f".{info.sop_uid}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            self._ensure_dir(target.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                with os.fdopen(fd, "wb", buffering=0) as f:
                    fd = -1
                    f.write(header)
                    f.write(dataset)
                    os.fsync(f.fileno())
            finally:
                if fd >= 0:
                    os.close(fd)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                with self._lock:
                    self._free_bytes = 0
                raise DiskFullError(f"disk full while storing {info.sop_uid}", STATUS_OUT_OF_RESOURCES) from e
            raise StoreError(f"cannot write {target.name}: {e.strerror}", STATUS_OUT_OF_RESOURCES) from e
        return target

    def _note_duplicate(self, info: InstanceInfo, target: Path, header: bytes, dataset: bytes | memoryview) -> None:
        """Count and log an instance received again (it replaces the stored file)."""
        # The dataset bytes decide (the file meta names the sending AE, which may differ).
        try:
            stored = target.read_bytes()
            same = len(stored) >= len(dataset) and stored[len(stored) - len(dataset):] == bytes(dataset)
        except OSError:
            same = False
        with self._lock:
            self.duplicates["identical" if same else "different"] += 1
        if same:
            log.info("instance %s of series %s received again, identical", info.sop_uid, info.series_uid)
        else:
            log.warning("instance %s of series %s received again with different content: the stored file is "
                        "replaced", info.sop_uid, info.series_uid)

    def remove_temp_files(self) -> int:
        """Delete temp files a killed process left behind; returns how many."""
        count = 0
        for tmp in self.root.glob(f"*/*/.*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    def scan(self) -> Iterator[Path]:
        """Every stored instance file, relative to root."""
        for path in self.root.glob("*/*/*.dcm"):
            yield path.relative_to(self.root)
