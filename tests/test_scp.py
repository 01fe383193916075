"""The listener over real associations with DCMTK: C-ECHO, C-STORE in the transfer
syntaxes scanners send, refusal of unknown AE titles, failure statuses."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicomnode.config import NodeSection
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore

from conftest import free_port, require_tool, wait_for
from node_helpers import echoscu, storescu, write_series

pytestmark = pytest.mark.peers


class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, info, rel: str) -> None:
        with self.lock:
            self.items.append((info.sop_uid, rel))


@pytest.fixture()
def scp(tmp_path):
    def make(**node_kw):
        node = NodeSection(ae_title="COVIDNODE", port=free_port(), bind_address="127.0.0.1", min_free_mb=0, **node_kw)
        store = InstanceStore(tmp_path / "storage", node.min_free_mb)
        rec = Recorder()
        server = StorageSCP(node, store, rec)
        server.start()
        made.append(server)
        return server, store, rec

    made: list[StorageSCP] = []
    yield make
    for s in made:
        s.stop()


def test_echo_and_wrong_called_ae(scp):
    server, _, _ = scp()
    assert echoscu(server.port).returncode == 0
    refused = echoscu(server.port, called_ae="SOMEONEELSE")
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stdout + refused.stderr


def test_allow_list_refuses_other_calling_ae(scp, tmp_path):
    server, store, rec = scp(allowed_calling_ae_titles=("SCANNER",))
    assert echoscu(server.port, calling_ae="SCANNER").returncode == 0
    refused = echoscu(server.port, calling_ae="INTRUDER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    series = write_series(tmp_path / "in", n_slices=2, size=32)
    assert storescu(server.port, series.paths, calling_ae="INTRUDER").returncode != 0
    assert rec.items == [] and not list(store.scan())


def dcmtk_convert(tool: str, options: list[str], paths) -> None:
    """Re-encode files in place with a DCMTK tool (dcmcjpeg, dcmconv)."""
    exe = require_tool(tool)
    for p in paths:
        out = Path(str(p) + ".new")
        subprocess.run([exe, *options, str(p), str(out)], check=True, capture_output=True, timeout=60)
        out.replace(p)


@pytest.mark.parametrize(
    "ts,flag,tool",
    [
        (ExplicitVRLittleEndian, "-xe", None),
        (ImplicitVRLittleEndian, "-xi", None),
        (JPEGLSLossless, "-xt", None),
        (JPEG2000Lossless, "-xv", None),
        (RLELossless, "-xr", None),
        (JPEGLosslessSV1, "-xs", ("dcmcjpeg", ["+e1"])),
        (DeflatedExplicitVRLittleEndian, "-xd", ("dcmconv", ["+td"])),
    ],
)
def test_store_in_each_transfer_syntax_is_durable_and_byte_exact(scp, tmp_path, ts, flag, tool):
    server, store, rec = scp()
    encode_as = ts if tool is None else ExplicitVRLittleEndian
    series = write_series(tmp_path / "in", n_slices=3, size=32, transfer_syntax=encode_as)
    if tool is not None:
        dcmtk_convert(tool[0], tool[1], series.paths)
    result = storescu(server.port, series.paths, extra=[flag])
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(uid for uid, _ in rec.items) == sorted(series.sop_uids)
    for uid, rel in rec.items:
        stored = dcmread(store.root / rel)
        assert stored.file_meta.TransferSyntaxUID == ts
        assert stored.SOPInstanceUID == uid
        original = dcmread(next(p for p in series.paths if dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid))
        assert stored.PixelData == original.PixelData


def test_storage_failure_becomes_a_dicom_status(scp, tmp_path):
    server, store, rec = scp()
    store.min_free_bytes = 10**18  # the guard trips: out of resources
    series = write_series(tmp_path / "in", n_slices=1, size=32)
    result = storescu(server.port, series.paths)
    assert "0xa700" in (result.stdout + result.stderr).lower() or result.returncode != 0
    assert rec.items == [] and not list(store.scan())
    store.min_free_bytes = 0
    store._free_checked = 0.0
    assert storescu(server.port, series.paths).returncode == 0
    assert len(rec.items) == 1


def test_many_associations_at_once(scp, tmp_path):
    server, store, rec = scp()
    series = [write_series(tmp_path / f"in{i}", n_slices=4, size=32, seed=i) for i in range(3)]
    threads = [threading.Thread(target=storescu, args=(server.port, s.paths)) for s in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(u for u, _ in rec.items) == sorted(u for s in series for u in s.sop_uids)


class _Request:
    """What a C-STORE request hands the handler: the dataset bytes, the request's UIDs
    and the accepted transfer syntax (no network)."""

    def __init__(self, dataset_bytes: bytes, sop_uid: str, sop_class: str, ts: str) -> None:
        import io

        self.stream, self.sop_uid, self.sop_class, self.ts = io.BytesIO(dataset_bytes), sop_uid, sop_class, ts


def _handle(request: _Request, store, on_stored) -> int:
    from dicomnode.scp import store_instance

    return store_instance(store, on_stored, request.ts, request.sop_class, request.sop_uid, request.stream, "SCANNER")


def _encoded(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_handler_never_raises_and_answers_a_status(tmp_path):
    from dicomnode.synthetic import ct_datasets

    from node_helpers import small_volume

    ds = ct_datasets(small_volume(1, 16))[0]
    store = InstanceStore(tmp_path / "storage", 0)
    good = _Request(_encoded(ds), ds.SOPInstanceUID, ds.SOPClassUID, ExplicitVRLittleEndian)

    def broken_bookkeeping(info, rel):
        raise RuntimeError("database gone")

    # durable file, bookkeeping failed: still success (the start-up rescan records it)
    assert _handle(good, store, broken_bookkeeping) == 0x0000
    assert len(list(store.scan())) == 1
    # a request that names another instance than the dataset: 0xA900
    other = _Request(_encoded(ds), "1.2.3.4", ds.SOPClassUID, ExplicitVRLittleEndian)
    assert _handle(other, store, Recorder()) == 0xA900
    # garbage bytes: 0xC210
    junk = _Request(b"\x08\x00\x18\x00UI\x04\x00abcd", "1.2.3.4", ds.SOPClassUID, ExplicitVRLittleEndian)
    assert _handle(junk, store, Recorder()) == 0xC210
    # path traversal in the dataset's Study UID: 0xC210, nothing written outside storage
    ds.StudyInstanceUID = "../../outside"
    evil = _Request(_encoded(ds), ds.SOPInstanceUID, ds.SOPClassUID, ExplicitVRLittleEndian)
    assert _handle(evil, store, Recorder()) == 0xC210
    assert sorted(p.name for p in tmp_path.iterdir()) == ["storage"]
    # an unexpected bug inside (here: no store object at all): 0xC211, no exception
    ds.StudyInstanceUID = "1.2.3"
    fine = _Request(_encoded(ds), ds.SOPInstanceUID, ds.SOPClassUID, ExplicitVRLittleEndian)
    assert _handle(fine, None, Recorder()) == 0xC211


def test_the_senders_release_is_reported_per_series(tmp_path):
    """The listener tells the node when the last sender of a series released."""
    node = NodeSection(ae_title="COVIDNODE", port=free_port(), bind_address="127.0.0.1", min_free_mb=0)
    released: list[str] = []
    server = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), Recorder(), on_released=released.append)
    server.start()
    try:
        series = write_series(tmp_path / "in", n_slices=3, size=32)
        assert storescu(server.port, series.paths).returncode == 0
        wait_for(lambda: released or None, 10, what="the release to be reported")
        assert released == [series.series_uid]
    finally:
        server.stop()
