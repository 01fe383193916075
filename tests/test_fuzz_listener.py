"""Fuzzing the fast listener's PDU and command-set parsing (issue 9): hypothesis makes
garbage, truncated and mutated A-ASSOCIATE-RQs and, on an established association,
P-DATA-TF PDUs with random PDV headers, command sets and datasets, sent over a real
loopback socket. Whatever arrives, the node must answer or close, never crash, hang, leak
threads or grow its memory; afterwards a real C-ECHO still works.

Bounded for CI (``FUZZ_EXAMPLES``, default 60 per property); run longer on demand, e.g.
``FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_listener.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.sop_class import CTImageStorage
from test_listener_limits import _associate_rq, _command, _rss_mb

from dicomnode.config import NodeSection
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore

from conftest import free_port, wait_for
from node_helpers import echoscu

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PDU = struct.Struct(">BBI")


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    node = NodeSection(
        ae_title="COVIDNODE",
        port=free_port(),
        bind_address="127.0.0.1",
        min_free_mb=0,
        association_timeout_s=2.0,
        idle_timeout_s=2.0,
        message_timeout_s=3.0,
        max_instance_mb=8,
    )
    stored: list[str] = []
    scp = StorageSCP(
        node,
        InstanceStore(tmp_path_factory.mktemp("fuzz") / "storage", 0),
        lambda info, rel: stored.append(info.sop_uid),
    )
    tracebacks: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = lambda record: tracebacks.append(record) if record.exc_info else None  # type: ignore[method-assign]
    logging.getLogger("dicomnode").addHandler(catcher)
    scp.start()
    scp.before_fuzzing = (threading.active_count(), _rss_mb())  # type: ignore[attr-defined]
    scp.tracebacks = tracebacks  # type: ignore[attr-defined]
    yield scp
    scp.stop()
    logging.getLogger("dicomnode").removeHandler(catcher)


def _send_and_drain(port: int, payload: bytes, after_associate: bool = False) -> None:
    """Send ``payload`` (after a valid association when asked), then read until the node
    answers and closes, or 3 s pass; the node must not keep a dead connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if after_associate:
            sock.sendall(_associate_rq())
            if sock.recv(6)[:1] != b"\x02":
                return
            sock.settimeout(1.0)
            try:
                sock.recv(65536)  # the rest of the A-ASSOCIATE-AC
            except socket.timeout:
                pass
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # no more from us: the node sees the end
        except OSError:
            return  # the node already closed: fine
        sock.settimeout(3.0)
        deadline = time.monotonic() + 3.0
        try:
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except OSError:
            pass


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, value in flips:
        b[pos % len(b)] = value
    return bytes(b[:cut]) if cut is not None else bytes(b)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    cut=st.none() | st.integers(0, 400),
    tail=st.binary(max_size=64),
)
def test_mutated_associate_requests(listener, flips, cut, tail):
    _send_and_drain(listener.port, _mutate(_associate_rq(), flips, cut) + tail)


@FUZZ
@given(raw=st.binary(max_size=512))
def test_garbage_before_association(listener, raw):
    _send_and_drain(listener.port, raw)


def _pdata(context: int, header: int, body: bytes, pdv_len: int | None = None) -> bytes:
    pdv = struct.pack(">IBB", len(body) + 2 if pdv_len is None else pdv_len, context, header) + body
    return PDU.pack(0x04, 0, len(pdv)) + pdv


@FUZZ
@given(
    context=st.sampled_from([1, 3, 255]),
    header=st.integers(0, 255),
    command=st.sampled_from(["store", "echo", "random"]),
    flips=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=8),
    pdv_len=st.none() | st.integers(0, 2**32 - 1),
    data=st.binary(max_size=2048),
    then=st.sampled_from(
        [b"", b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"]
    ),
)
def test_random_messages_on_an_association(listener, context, header, command, flips, pdv_len, data, then):
    if command == "store":
        cmd = _command(0x0001, CTImageStorage, "1.2.3.4")
    elif command == "echo":
        cmd = _command(0x0030, "1.2.840.10008.1.1", has_data=False)
    else:
        cmd = bytes(flips and [v for _, v in flips] or [0])
    cmd = _mutate(cmd, flips, None) if command != "random" else cmd
    payload = _pdata(context, header, cmd, pdv_len) + _pdata(context, 0x02, data) + then
    _send_and_drain(listener.port, payload, after_associate=True)


def test_the_node_is_whole_after_the_fuzzing(listener):
    """Runs after the properties (file order): echo works, no thread or memory leak."""
    baseline_threads, rss = listener.before_fuzzing
    for _ in range(20):
        _send_and_drain(listener.port, b"\x01\x00\xff\xff\xff\xff garbage")
    assert echoscu(listener.port).returncode == 0
    wait_for(lambda: listener.stats()["active"] == 0 or None, 10, what="every fuzz association to end")
    wait_for(lambda: threading.active_count() <= baseline_threads + 2 or None, 10, what="threads to end")
    assert _rss_mb() - rss < 100
    # Bad input is a refusal or an abort with one line, never an unexpected error.
    import traceback

    assert [r.getMessage() + "\n" + "".join(traceback.format_exception(*r.exc_info)) for r in listener.tracebacks] == []
