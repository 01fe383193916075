"""The fast listener under hostile peers (issue 9, defects 1-6 and 12): every limit is
reproduced over a real socket on loopback, against the real server and store.

Each test is the attack the security campaign measured: a PDU announcing gigabytes, a
dataset that never ends, a sender that drips one byte at a time, connections that never
associate, one host holding every slot, a UID that forges a log line, a flood of
malformed requests, and SOP classes on the wrong presentation context.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from dicomnode.config import NodeSection
from dicomnode.logsafe import RateLimitedLog, peer_text
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore

from conftest import free_port

PDU = struct.Struct(">BBI")
PDV = struct.Struct(">IBB")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@pytest.fixture
def listener(tmp_path, request):
    """A fast-engine listener with the limits the test asks for (``indirect`` params)."""
    limits = dict(getattr(request, "param", {}))
    node = NodeSection(ae_title="COVIDNODE", port=free_port(), bind_address="127.0.0.1", min_free_mb=0, **limits)
    stored: list[str] = []
    scp = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    yield scp, stored
    scp.stop()


def _associate_rq(contexts=((1, CTImageStorage),), calling: str = "SCANNER") -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = calling
    prim.called_ae_title = "COVIDNODE"
    cxs = []
    for cid, uid in contexts:
        cx = build_context(uid, ImplicitVRLittleEndian)
        cx.context_id = cid
        cxs.append(cx)
    prim.presentation_context_definition_list = cxs
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    prim.user_information = [ml]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return -1, b""
        head += chunk
    kind, _, length = PDU.unpack(head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def _associated(port: int, contexts=((1, CTImageStorage),)) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_associate_rq(contexts))
    kind, _ = _read_pdu(sock)
    assert kind == 0x02, "A-ASSOCIATE-AC expected"
    return sock


def _command(field: int, sop_class: str, sop_uid: str = "", has_data: bool = True) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = field
    ds.MessageID = 1
    if field == 0x0001:
        ds.Priority = 0
        ds.AffectedSOPInstanceUID = sop_uid
    ds.CommandDataSetType = 0x0000 if has_data else 0x0101
    return encode(ds, True, True)


def _pdata(ctx: int, mch: int, payload: bytes) -> bytes:
    pdv = PDV.pack(len(payload) + 2, ctx, mch) + payload
    return PDU.pack(0x04, 0, len(pdv)) + pdv


def _status_of(body: bytes) -> int:
    """Status (0000,0900) of a one-PDV command response."""
    raw = body[6:]
    i = 0
    while i + 8 <= len(raw):
        _, elem, length = struct.unpack("<HHI", raw[i : i + 8])
        if elem == 0x0900:
            return struct.unpack("<H", raw[i + 8 : i + 10])[0]
        i += 8 + length
    raise AssertionError("no status in the response")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the node aborts/closes the connection within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data or data[0] == 0x07:  # closed, or A-ABORT
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_a_pdu_announcing_gigabytes_is_aborted_before_it_is_buffered(listener):
    scp, _ = listener
    rss = _rss_mb()
    with _associated(scp.port) as sock:
        sock.sendall(_pdata(1, 0x03, _command(0x0001, CTImageStorage, "1.2.3.4")))
        # A P-DATA PDU of 4 GB holding one dataset PDV of (almost) that size.
        sock.sendall(PDU.pack(0x04, 0, 0xFFFFFFF0) + PDV.pack(0xFFFFFFEC, 1, 0x02) + b"\0" * 4096)
        assert _closed_within(sock, 10)
    assert _rss_mb() - rss < 100


@pytest.mark.parametrize("listener", [{"max_instance_mb": 1}], indirect=True)
def test_a_dataset_that_never_ends_is_aborted_at_the_instance_limit(listener):
    scp, stored = listener
    rss = _rss_mb()
    with _associated(scp.port) as sock:
        sock.sendall(_pdata(1, 0x03, _command(0x0001, CTImageStorage, "1.2.3.4")))
        fragment = _pdata(1, 0x00, b"\0" * 16000)  # dataset fragments, never the last one
        aborted = False
        try:
            for _ in range(200):  # 3.2 MB, more than the 1 MB limit
                sock.sendall(fragment)
        except OSError:
            aborted = True
        assert aborted or _closed_within(sock, 10)
    assert stored == [] and _rss_mb() - rss < 50


@pytest.mark.parametrize("listener", [{"association_timeout_s": 1.0, "idle_timeout_s": 1.0}], indirect=True)
def test_a_peer_dripping_one_byte_at_a_time_is_cut_at_the_deadline(listener):
    scp, _ = listener
    rq = _associate_rq()
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
        start = time.monotonic()
        closed = None
        for byte in rq[:20]:  # one byte every 0.3 s: each recv alone is well within 1 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = time.monotonic() - start
                break
            if _closed_within(sock, 0.3):
                closed = time.monotonic() - start
                break
        assert closed is not None and closed < 3.0, "the drip kept the connection open"


@pytest.mark.parametrize("listener", [{"idle_timeout_s": 1.0}], indirect=True)
def test_an_idle_association_is_aborted_after_the_idle_limit(listener):
    scp, _ = listener
    with _associated(scp.port, ((1, Verification),)) as sock:
        start = time.monotonic()
        assert _closed_within(sock, 5)
        assert time.monotonic() - start < 3


@pytest.mark.parametrize("listener", [{"max_pending_connections": 4}], indirect=True)
def test_connections_that_never_associate_are_capped(listener):
    scp, _ = listener
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", scp.port), timeout=10) for _ in range(4)]
    time.sleep(0.3)
    extra = [socket.create_connection(("127.0.0.1", scp.port), timeout=10) for _ in range(6)]
    try:
        assert all(_closed_within(s, 3) for s in extra), "connections past the cap must be closed at once"
        assert threading.active_count() - threads <= 4 + 2
        # A real sender still gets through once the waiting ones are gone.
        for s in idle:
            s.close()
        time.sleep(0.3)
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="COVIDNODE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        for s in idle + extra:
            s.close()


@pytest.mark.parametrize("listener", [{"max_associations_per_address": 2}], indirect=True)
def test_one_address_cannot_take_every_slot(listener, caplog):
    scp, _ = listener
    held = [_associated(scp.port, ((1, Verification),)) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
            sock.sendall(_associate_rq(((1, Verification),)))
            kind, body = _read_pdu(sock)
            assert kind == 0x03  # A-ASSOCIATE-RJ
            assert body[1] == 0x02  # transient: try again later
        assert any("too many associations from 127.0.0.1" in r.getMessage() for r in caplog.records)
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)  # the slots are given back when the peers leave
    with _associated(scp.port, ((1, Verification),)):
        pass


def test_a_uid_with_a_newline_cannot_forge_a_log_line(listener, caplog):
    scp, stored = listener
    caplog.set_level(logging.INFO)
    forged = "1.2.3\nCRITICAL forged: node compromised"
    with _associated(scp.port) as sock:
        sock.sendall(_pdata(1, 0x03, _command(0x0001, CTImageStorage, forged)))
        sock.sendall(_pdata(1, 0x02, b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status_of(body) != 0x0000
    assert stored == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("forged" in m for m in messages), "the refusal is logged"
    assert not any("\n" in m or "\r" in m for m in messages)
    assert peer_text(forged) == "1.2.3\\x0aCRITICAL forged: node compromised"


def test_malformed_association_requests_log_one_line_each_rate_limited(listener, caplog):
    scp, _ = listener
    caplog.set_level(logging.INFO)
    for _ in range(60):
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
            body = b"\x00\x01\x00\x00" + b"\xff" * 64  # protocol version, then garbage
            sock.sendall(PDU.pack(0x01, 0, len(body)) + body)
            _closed_within(sock, 5)
    time.sleep(0.3)
    records = [r for r in caplog.records if r.name == "dicomnode.fastscp"]
    assert 1 <= len(records) <= 25, [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in records), "no traceback for a peer's garbage"
    assert all("\n" not in r.getMessage() for r in records)


def test_sop_class_must_match_its_presentation_context(listener):
    """An MR instance on the CT context and a C-ECHO on a CT context get 0x0122, not success."""
    scp, stored = listener
    with _associated(scp.port) as sock:
        sock.sendall(_pdata(1, 0x03, _command(0x0030, Verification, has_data=False)))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status_of(body) == 0x0122
        sock.sendall(_pdata(1, 0x03, _command(0x0001, MRImageStorage, "1.2.3.4")))
        sock.sendall(_pdata(1, 0x02, b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\x00"))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status_of(body) == 0x0122
    assert stored == []


def test_rate_limited_log_holds_back_and_says_so(caplog):
    limiter = RateLimitedLog(logging.getLogger("test.ratelimit"), burst=3, window_s=0.2)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for i in range(10):
            limiter.warning("refused %d", i)
        time.sleep(0.25)
        limiter.warning("refused again")
    messages = [r.getMessage() for r in caplog.records if r.name == "test.ratelimit"]
    assert messages == [
        "refused 0",
        "refused 1",
        "refused 2",
        "7 similar message(s) held back in the last 0 s",
        "refused again",
    ]


def _try_associate(port: int, calling: str) -> tuple[int, bytes, socket.socket]:
    """(PDU type of the answer, its body, the open socket): 0x02 accepted, 0x03 rejected."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_associate_rq(((1, Verification),), calling=calling))
    kind, body = _read_pdu(sock)
    return kind, body, sock


@pytest.mark.parametrize(
    "listener",
    [
        {
            "allowed_peers": [
                {"ae_title": "SCANNER", "addresses": ["127.0.0.0/8"]},
                {"ae_title": "FAR", "addresses": ["10.0.0.0/8"]},
            ]
        }
    ],
    indirect=True,
)
def test_allowed_peers_check_the_ae_title_and_the_address(listener, caplog):
    scp, _ = listener
    results = {}
    for calling in ("SCANNER", "FAR", "OTHER"):
        kind, body, sock = _try_associate(scp.port, calling)
        sock.close()
        results[calling] = (kind, body[2:4] if kind == 0x03 else b"")
    assert results["SCANNER"][0] == 0x02
    # FAR is a known AE title but calls from the wrong network: refused like a stranger
    # (permanent, service user, calling AE title not recognised).
    assert results["FAR"] == (0x03, b"\x01\x03") and results["OTHER"] == (0x03, b"\x01\x03")
    assert any("'FAR' from 127.0.0.1 is not in allowed_peers" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "listener",
    [
        {
            "max_associations": 3,
            "reserved_associations": 1,
            "reserved_for": ["SCANNER"],
            "max_associations_per_address": 0,
        }
    ],
    indirect=True,
)
def test_idle_strangers_cannot_take_the_reserved_slot(listener):
    scp, _ = listener
    held = []
    try:
        for _ in range(2):
            kind, _, sock = _try_associate(scp.port, "IDLER")
            held.append(sock)
            assert kind == 0x02
        kind, body, sock = _try_associate(scp.port, "IDLER")
        held.append(sock)
        assert kind == 0x03 and body[1] == 0x02  # the third stranger: transient refusal
        kind, _, sock = _try_associate(scp.port, "SCANNER")
        held.append(sock)
        assert kind == 0x02  # the scanner gets the slot kept for it
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("listener", [{"max_associations_per_ae": 1}], indirect=True)
def test_one_calling_ae_title_has_its_own_limit(listener):
    scp, _ = listener
    held = []
    try:
        first, _, sock = _try_associate(scp.port, "SCANNER")
        held.append(sock)
        second, _, sock = _try_associate(scp.port, "SCANNER")
        held.append(sock)
        other, _, sock = _try_associate(scp.port, "CT2")
        held.append(sock)
        assert (first, second, other) == (0x02, 0x03, 0x02)
    finally:
        for s in held:
            s.close()
