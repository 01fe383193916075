"""Instance store: atomic durable files, UID validation (no path traversal), duplicates,
the free-disk guard, header parsing without decoding pixels."""

from __future__ import annotations

import io
import logging

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.errors import DiskFullError, InvalidUIDError, StoreError
from dicomnode.header import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    InstanceInfo,
    encode_file_meta,
    parse_header,
    read_file_header,
    validate_uid,
)
from dicomnode.store import InstanceStore

from node_helpers import small_volume


def encoded(ds, implicit: bool = False) -> bytes:
    """The dataset bytes as a C-STORE carries them (no file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.fixture()
def ct():
    from dicomnode.synthetic import ct_datasets

    return ct_datasets(small_volume(2, 32), patient_name="SECRET^NAME", patient_id="SECRET-ID")[0]


def info_of(ds) -> InstanceInfo:
    return parse_header(io.BytesIO(encoded(ds)), ExplicitVRLittleEndian)


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "2.25.0"])
def test_valid_uids(uid):
    assert validate_uid(uid, "x") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../x",
        "1.2/../3",
        "1.2.03",
        "1..2",
        ".1.2",
        "1.2.",
        "abc",
        "1.2.3\\..\\4",
        "1" + ".1" * 40,
        "/etc/passwd",
        "1.2.3/4",
        "1",
        None,
    ],
)
def test_invalid_uids_are_refused(uid):
    with pytest.raises(InvalidUIDError) as info:
        validate_uid(uid, "SOP Instance UID")
    assert info.value.status == STATUS_CANNOT_UNDERSTAND


def test_header_parsing_reads_identifiers_and_hides_the_patient(ct):
    info = info_of(ct)
    assert info.sop_uid == ct.SOPInstanceUID and info.series_uid == ct.SeriesInstanceUID
    assert info.modality == "CT" and "ORIGINAL" in info.image_type and info.body_part == "CHEST"
    assert info.orientation and info.slice_thickness == pytest.approx(2.0)
    assert "SECRET" not in repr(info) and len(info.patient_key) == 16
    implicit = parse_header(io.BytesIO(encoded(ct, implicit=True)), ImplicitVRLittleEndian)
    assert implicit == info.__class__(**{**info.__dict__, "transfer_syntax": ImplicitVRLittleEndian})


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_header_mismatch_and_garbage(ct):
    with pytest.raises(StoreError) as info:
        parse_header(io.BytesIO(encoded(ct)), ExplicitVRLittleEndian, sop_uid="1.2.3")
    assert info.value.status == STATUS_DATASET_MISMATCH
    with pytest.raises(StoreError) as info:
        parse_header(io.BytesIO(b"\x08\x00\x18\x00UI\xff\xff" + b"x" * 20), ExplicitVRLittleEndian)
    assert info.value.status == STATUS_CANNOT_UNDERSTAND


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_traversal_in_dataset_uid_is_refused_before_any_write(ct, tmp_path):
    ct.SeriesInstanceUID = "1.2/../../../escape"
    with pytest.raises(InvalidUIDError):
        info_of(ct)
    store = InstanceStore(tmp_path / "storage", 0)
    bad = InstanceInfo("1.2.3", "../..", "1.2", "1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    with pytest.raises(InvalidUIDError):
        store.store(bad, b"", b"")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_store_writes_a_readable_dicom_file_atomically(ct, tmp_path):
    store = InstanceStore(tmp_path / "storage", 0)
    info = info_of(ct)
    header = encode_file_meta(info.sop_class_uid, info.sop_uid, ExplicitVRLittleEndian, "SCANNER")
    path = store.store(info, header, encoded(ct))
    assert path == tmp_path / "storage" / ct.StudyInstanceUID / ct.SeriesInstanceUID / f"{ct.SOPInstanceUID}.dcm"
    back = dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.SourceApplicationEntityTitle == "SCANNER"
    assert back.PixelData == ct.PixelData
    assert read_file_header(path) == info
    assert not list(path.parent.glob(".*.tmp"))
    assert list(store.scan()) == [path.relative_to(store.root)]


def test_duplicate_replaces_the_earlier_file(ct, tmp_path, caplog):
    store = InstanceStore(tmp_path / "storage", 0)
    info = info_of(ct)
    header = encode_file_meta(info.sop_class_uid, info.sop_uid, ExplicitVRLittleEndian)
    store.store(info, header, encoded(ct))
    store.store(
        info, encode_file_meta(info.sop_class_uid, info.sop_uid, ExplicitVRLittleEndian, "OTHER"), encoded(ct)
    )  # a re-send, from another AE: the same dataset
    assert store.duplicates == {"identical": 1, "different": 0}
    ct.SeriesDescription = "corrected"
    with caplog.at_level(logging.WARNING, logger="dicomnode.store"):
        path = store.store(info, header, encoded(ct))
    assert dcmread(path).SeriesDescription == "corrected"
    assert len(list(store.scan())) == 1
    # Issue 9, defect 13: a different content under the same UID leaves a trace.
    assert store.duplicates == {"identical": 1, "different": 1}
    assert any("different content" in r.getMessage() and info.sop_uid in r.getMessage() for r in caplog.records)


def test_failed_write_leaves_no_file(ct, tmp_path, monkeypatch):
    import os

    store = InstanceStore(tmp_path / "storage", 0)
    info = info_of(ct)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(DiskFullError) as err:
        store.store(info, encode_file_meta(info.sop_class_uid, info.sop_uid, ExplicitVRLittleEndian), encoded(ct))
    assert err.value.status == STATUS_OUT_OF_RESOURCES
    assert [p for p in (tmp_path / "storage").rglob("*") if p.is_file()] == []


def test_free_disk_guard_refuses_with_out_of_resources(ct, tmp_path):
    store = InstanceStore(tmp_path / "storage", min_free_mb=10**12)  # more than any disk has
    with pytest.raises(DiskFullError) as err:
        store.store(info_of(ct), b"", encoded(ct))
    assert err.value.status == STATUS_OUT_OF_RESOURCES
    assert "min_free_mb" in str(err.value)


def test_free_disk_guard_counts_every_write_between_measurements(ct, tmp_path, monkeypatch):
    """Issue 9, defect 7: a fast sender cannot overrun the reserve between two statvfs
    calls (they were once a second): each write is counted against the last measurement."""
    import os
    from types import SimpleNamespace

    data = encoded(ct)
    reserve = 1 * 2**20
    calls = []

    root = tmp_path / "storage"

    def statvfs(path):  # a disk with the reserve plus room for 2.5 instances
        calls.append(path)
        used = sum(p.stat().st_size for p in root.rglob("*.dcm"))
        return SimpleNamespace(f_bavail=reserve + int(2.5 * len(data)) - used, f_frsize=1)

    monkeypatch.setattr(os, "statvfs", statvfs)
    store = InstanceStore(root, min_free_mb=1)
    for i in range(2):
        ct.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.{i + 1}"
        store.store(info_of(ct), b"", encoded(ct))
    ct.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.3"
    with pytest.raises(DiskFullError) as err:
        store.store(info_of(ct), b"", encoded(ct))
    assert "reserve" in str(err.value)
    assert len(list(store.scan())) == 2


def test_temp_files_of_a_killed_write_are_removed(tmp_path):
    store = InstanceStore(tmp_path / "storage", 0)
    folder = store.root / "1.2" / "1.2.3"
    folder.mkdir(parents=True)
    (folder / ".1.2.3.4.abcd.tmp").write_bytes(b"half")
    assert store.remove_temp_files() == 1
    assert not any(folder.iterdir())


def _pydicom_info(raw: bytes, implicit: bool, ts: str) -> InstanceInfo:
    from pydicom.filereader import read_dataset

    from dicomnode.header import _info_from

    return _info_from(read_dataset(io.BytesIO(raw), implicit, True), ts)


@pytest.mark.parametrize("implicit,ts", [(False, ExplicitVRLittleEndian), (True, ImplicitVRLittleEndian)])
@pytest.mark.parametrize("undefined_length", [False, True])
def test_fast_header_reader_agrees_with_pydicom(ct, implicit, ts, undefined_length):
    """The hand-written reader gives what pydicom gives, sequences before the identifiers included."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicomnode.header import fast_header_values

    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    nested = Dataset()
    nested.CodeValue = "X"
    item.ConceptNameCodeSequence = Sequence([nested])
    ct.ReferencedImageSequence = Sequence([item, item])
    ct.SliceThickness = "2.5"
    if undefined_length:
        ct.ReferencedImageSequence.is_undefined_length = True
        for it in ct.ReferencedImageSequence:
            it.is_undefined_length_sequence_item = True
    raw = encoded(ct, implicit=implicit)
    assert fast_header_values(memoryview(raw), implicit) is not None  # the fast path was taken
    assert parse_header(io.BytesIO(raw), ts) == _pydicom_info(raw, implicit, ts)


def test_fast_header_reader_leaves_other_character_sets_to_pydicom(ct):
    from dicomnode.header import fast_header_values

    ct.SpecificCharacterSet = "ISO_IR 100"
    ct.PatientName = "Müller^Jörg"
    raw = encoded(ct)
    assert fast_header_values(memoryview(raw), False) is None
    assert parse_header(io.BytesIO(raw), ExplicitVRLittleEndian) == _pydicom_info(raw, False, ExplicitVRLittleEndian)
