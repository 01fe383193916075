"""The DICOM listener: C-ECHO and C-STORE (our fast upper layer by default, see fastscp).

Association: the called AE title must be ours, and with a non-empty allow list only the
listed calling AE titles are accepted (the others are rejected during A-ASSOCIATE).

C-STORE: the received bytes are written as they came (file meta from the accepted
transfer syntax + the dataset bytes, never decoded), durably, and only then answered
with success. Only the identifying header elements are parsed. Every failure becomes a
DICOM status and a log line with UIDs only; the handler never raises.
"""

from __future__ import annotations

import logging
import queue
import select
import ssl
import threading
import time
from typing import Any, Callable

from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from . import fastscp
from .config import NodeSection
from .errors import StoreError
from .logsafe import peer_text
from .store import STATUS_PROCESSING_FAILURE, InstanceInfo, InstanceStore, encode_file_meta, parse_header
from .tls import server_context

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage, in order of preference.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, RLELossless,
)

#: Called after an instance is durable: (header info, path relative to the storage root).
OnStored = Callable[[InstanceInfo, str], None]


def handle_store(event: evt.Event, store: InstanceStore, on_stored: OnStored) -> int:
    """C-STORE through pynetdicom: the same as ``store_instance``."""
    request = event.request
    try:
        stream = request.DataSet
        ts = str(event.context.transfer_syntax)
        calling = event.assoc.requestor.ae_title
    except Exception:
        log.exception("C-STORE event is malformed")
        return STATUS_PROCESSING_FAILURE
    return store_instance(store, on_stored, ts, str(request.AffectedSOPClassUID or ""),
                          str(request.AffectedSOPInstanceUID or ""), stream, calling)


def store_instance(store: InstanceStore, on_stored: OnStored, ts: str, sop_class: str, sop_uid: str,
                   stream: Any, calling_ae: str) -> int:
    """C-STORE: parse the header, store durably, record; return a DICOM status (never raises)."""
    status, record = store_durably(store, on_stored, ts, sop_class, sop_uid, stream, calling_ae)
    if record is not None:
        record()
    return status


def store_durably(store: InstanceStore, on_stored: OnStored, ts: str, sop_class: str, sop_uid: str,
                  stream: Any, calling_ae: str) -> tuple[int, Callable[[], None] | None]:
    """Parse the header and store durably; return the status and the bookkeeping still to
    do (``None`` after a failure). Split so a listener can answer before it records."""
    try:
        stream.seek(0)
        info = parse_header(stream, ts, sop_class, sop_uid)
        header = encode_file_meta(info.sop_class_uid, info.sop_uid, ts, calling_ae)
        path = store.store(info, header, stream.getbuffer())
    except StoreError as e:
        # The reason may quote what the peer sent (UIDs, parse errors): escaped like the UID.
        log.warning("C-STORE %s refused with 0x%04X: %s", _safe(sop_uid), e.status, peer_text(str(e), 300))
        return e.status, None
    except Exception:  # the handler never raises: any bug becomes a failure status
        log.exception("C-STORE %s failed unexpectedly", _safe(sop_uid))
        return STATUS_PROCESSING_FAILURE, None

    def record() -> None:
        try:
            on_stored(info, str(path.relative_to(store.root)))
        except Exception:
            # The file is durable; the start-up rescan records it if this bookkeeping failed.
            log.exception("instance %s stored but not recorded; a restart will pick it up", _safe(info.sop_uid))
    return 0x0000, record


class ViewStream:
    """A read-only file over a memoryview (what pydicom's reader and the store need):
    io.BytesIO would copy the 0.5 MB dataset once more."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = bytes(self._view[self._pos:end])
        self._pos = max(self._pos, end)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def getbuffer(self) -> memoryview:
        return self._view


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def handle_rejected(event: evt.Event) -> None:
    """Say in the log why an association was refused (AE titles are not patient data)."""
    req = event.assoc.requestor
    log.warning("association from %s:%s refused (calling AE %s, called AE %s)", req.address, req.port,
                peer_text(req.ae_title, 16), peer_text(event.assoc.acceptor.ae_title, 16))


def _safe(uid: str) -> str:
    return peer_text(uid, 64)


def build_ae(node: NodeSection) -> AE:
    """An AE that accepts Verification and every storage SOP class in our transfer syntaxes."""
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu
    ae.require_called_aet = True
    ae.require_calling_aet = list(node.allowed_calling_ae_titles)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
    ae.maximum_associations = 32
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    return ae


class _ResponsiveDUL(DULServiceProvider):
    """pynetdicom's DUL reactor polls the socket without waiting (select timeout 0) and
    sleeps 1 ms whenever a loop had nothing to do, so every PDU and every C-STORE response
    waits for a sleep (several ms on a busy machine), which caps one association at a few
    hundred images/s. This one, while nothing is waiting to be sent, waits on the socket
    itself for up to ``SOCKET_WAIT_S``: it wakes the moment data arrives. While the peer is
    active (a PDU in the last 50 ms) it then skips the sleep; an idle association still
    sleeps 1 ms per loop, as before."""

    SOCKET_WAIT_S = 0.0005
    IDLE_DELAY_S = 0.001
    ACTIVE_WINDOW_S = 0.05

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        started = getattr(self._idle_timer, "_start_time", None)
        if started is not None and time.time() - started < self.ACTIVE_WINDOW_S:
            return 0.0
        return self.IDLE_DELAY_S

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # the base class assigns a fixed delay; ours is adaptive

    def _is_transport_event(self) -> bool:
        raw = getattr(self.socket, "socket", None)
        if raw is not None and self.to_provider_queue.empty():
            try:
                select.select([raw], [], [], self.SOCKET_WAIT_S)
            except (OSError, ValueError):
                pass  # closed meanwhile: the base class reports it
        return super()._is_transport_event()


class _WaitingDIMSE(DIMSEServiceProvider):
    """The acceptor reactor polls ``get_msg(block=False)`` after a fixed 1 ms sleep; waiting
    briefly on the queue instead hands a message over as soon as it is complete."""

    POLL_WAIT_S = 0.005

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block)
        try:
            return self.msg_queue.get(timeout=self.POLL_WAIT_S)
        except queue.Empty:
            return None, None


class _ResponsiveRequestHandler(RequestHandler):
    """Creates acceptor associations with the responsive DUL and DIMSE providers above
    (class swap: they only override polling, never state)."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        assoc.dul.__class__ = _ResponsiveDUL
        assoc.dimse.__class__ = _WaitingDIMSE
        return assoc


class SeriesSenders:
    """Which open associations sent instances of which series, so that the end of the last
    one can complete a series at once (``[node] complete_on_release``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_assoc: dict[int, dict[str, int]] = {}  # association -> series -> instances
        self._open: dict[str, int] = {}

    def sent(self, assoc: object, series_uid: str) -> None:
        with self._lock:
            mine = self._by_assoc.setdefault(id(assoc), {})
            if series_uid not in mine:
                mine[series_uid] = 0
                self._open[series_uid] = self._open.get(series_uid, 0) + 1
            mine[series_uid] += 1

    def counts(self, assoc: object) -> dict[str, int]:
        """Instances this association stored, per series (so far)."""
        with self._lock:
            return dict(self._by_assoc.get(id(assoc), {}))

    def ended(self, assoc: object, released: bool) -> list[str]:
        """The series whose last open sender this was; [] unless it released normally (an
        aborted sender may not have sent everything: the quiet period decides)."""
        done = []
        with self._lock:
            for series_uid in self._by_assoc.pop(id(assoc), {}):
                left = self._open.get(series_uid, 1) - 1
                if left > 0:
                    self._open[series_uid] = left
                    continue
                self._open.pop(series_uid, None)
                if released:
                    done.append(series_uid)
        return done


class StorageSCP:
    """The listening server; ``start`` binds, ``stop`` refuses new associations and closes.

    ``engine="fast"`` (default) is our own one-thread-per-association upper layer
    (``fastscp``), ~2x faster per association; ``engine="pynetdicom"`` is the earlier
    listener on pynetdicom's reactors, kept for comparison and as a fallback.
    """

    def __init__(self, node: NodeSection, store: InstanceStore, on_stored: OnStored,
                 engine: str = "fast", observe: Callable[[str, int, int], None] | None = None,
                 on_released: Callable[[str], None] | None = None,
                 audit: Callable[..., None] | None = None) -> None:
        """``on_released``: called with a series UID when the last association that sent it
        released normally (None: the quiet period alone completes series); ``audit``:
        told of associations and of the instances each stored (dicomnode.audit)."""
        if engine not in ("fast", "pynetdicom"):
            raise ValueError(f"unknown listener engine {engine!r}")
        if engine == "pynetdicom" and (node.allowed_peers or node.tls_client_subjects or node.reserved_associations):
            # Never a silently ignored allow list: these rules live in the fast engine only.
            raise ValueError("allowed_peers, tls_client_subjects and reserved_associations need the fast engine")
        self.node = node
        self.store = store
        self.on_stored = on_stored
        self.on_released = on_released
        self.audit = audit
        self.senders = SeriesSenders()
        self.engine = engine
        #: Told (calling AE, dataset bytes, DICOM status) of every C-STORE (metrics).
        self.observe = observe
        self.ae = build_ae(node)
        self._servers: dict[str, Any] = {}

    @property
    def port(self) -> int:
        """The plain listener's port (the TLS one's when the plain port is off)."""
        server = self._servers.get("plain") or self._servers.get("tls")
        return int(server.server_address[1]) if server is not None else (self.node.port or self.node.tls_port)

    @property
    def tls_port(self) -> int | None:
        server = self._servers.get("tls")
        return int(server.server_address[1]) if server is not None else None

    def _recorder(self, assoc: object) -> OnStored:
        """``on_stored`` that also notes which association sent which series."""
        if self.on_released is None and self.audit is None:
            return self.on_stored

        def record(info: InstanceInfo, rel_path: str) -> None:
            self.on_stored(info, rel_path)
            self.senders.sent(assoc, info.series_uid)
        return record

    def _ended(self, assoc: object, released: bool) -> None:
        if self.audit is not None:
            calling = str(getattr(assoc, "calling_ae", "") or getattr(getattr(assoc, "requestor", None), "ae_title", ""))
            for series_uid, count in self.senders.counts(assoc).items():
                self.audit("instances_received", "success" if released else "aborted", calling_ae=calling,
                           series_uid=series_uid, instances=count)
        done = self.senders.ended(assoc, released)
        if self.on_released is None:
            return
        for series_uid in done:
            try:
                self.on_released(series_uid)
            except Exception:  # the quiet period still completes it
                log.exception("series %s: completion on release failed", _safe(series_uid))

    def _store_fast(self, ts: str, sop_class: str, sop_uid: str, data: memoryview,
                    calling_ae: str, assoc: object = None) -> tuple[int, Callable[[], None] | None]:
        status, after = store_durably(self.store, self._recorder(assoc), ts, sop_class, sop_uid, ViewStream(data),
                                      calling_ae)
        if self.observe is not None:
            self.observe(calling_ae, len(data), status)
        return status, after

    def _store_event(self, event: evt.Event) -> int:
        status = handle_store(event, self.store, self._recorder(event.assoc))
        if self.observe is not None:
            try:
                calling, size = event.assoc.requestor.ae_title, len(event.request.DataSet.getbuffer())
            except Exception:
                calling, size = "?", 0
            self.observe(calling, size, status)
        return status

    def stats(self) -> dict[str, int]:
        """Associations open now and refused/aborted so far, over both listeners (the fast
        engine counts both)."""
        total = {"active": 0, "refused": 0}
        for server in self._servers.values():
            if isinstance(server, fastscp.FastServer):
                counts = server.stats()
                total["active"] += counts["active"]
                total["refused"] += counts["refused"]
            else:
                total["active"] += len(getattr(server, "active_associations", []) or [])
        return total

    def _space_problem(self) -> str:
        """The disk watermark ([node] refuse_associations_below_mb): '' above it."""
        floor = int(self.node.refuse_associations_below_mb) * 1024 * 1024
        if floor <= 0:
            return ""
        free = self.store.free_bytes()
        return "" if free >= floor else (f"free disk space {free // 2**20} MB is below the "
                                         f"{floor // 2**20} MB watermark")

    def _make_server(self, port: int, tls: "ssl.SSLContext | None") -> Any:
        if self.engine == "fast":
            return fastscp.FastServer(self.node, self._store_fast, self.ae.supported_contexts, self._ended,
                                      ssl_context=tls, port=port, audit=self.audit, space_problem=self._space_problem)
        handlers = [
            (evt.EVT_C_STORE, self._store_event),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REJECTED, handle_rejected),
            (evt.EVT_RELEASED, lambda event: self._ended(event.assoc, True)),
            (evt.EVT_ABORTED, lambda event: self._ended(event.assoc, False)),
            (evt.EVT_CONN_CLOSE, lambda event: self._ended(event.assoc, False)),  # after a release: no-op
        ]
        server = self.ae.make_server((self.node.bind_address, port), evt_handlers=handlers, ssl_context=tls,
                                     server_class=ThreadedAssociationServer,
                                     request_handler=_ResponsiveRequestHandler)
        self.ae._servers.append(server)  # as start_server does: shutdown() removes it again
        return server

    def start(self) -> None:
        """The plain listener on ``port`` (unless 0) and the TLS one on ``tls_port`` (unless 0)."""
        wanted = []
        if self.node.port:
            wanted.append(("plain", self.node.port, None))
        if self.node.tls_port:
            wanted.append(("tls", self.node.tls_port, server_context(self.node)))
        try:
            for name, port, tls in wanted:
                server = self._make_server(port, tls)
                threading.Thread(target=server.serve_forever, name=f"dicom-listener-{name}", daemon=True).start()
                self._servers[name] = server
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.shutdown()  # stops accepting (pynetdicom's also closes its associations)
            if isinstance(server, fastscp.FastServer):
                server.server_close()
                server.close_associations()
