"""A lean DICOM upper layer for C-ECHO and C-STORE: one thread per association, blocking I/O.

Why: pynetdicom receives through two threads per association (DUL reactor -> queue ->
association reactor -> DIMSE reassembly -> back through the DUL to send the response).
On one association that hand-off cost ~4 ms per image, more than our durable store
itself. Here the thread that reads the socket also stores and answers, so a C-STORE
costs one recv loop, the store and one send.

What is reused from pynetdicom: the PDU classes for the A-ASSOCIATE exchange and its
presentation-context negotiation. P-DATA-TF is parsed here by hand (it is the hot path);
the command set (Implicit VR Little Endian, PS3.7 6.3.1) is decoded with pydicom and the
responses are encoded by hand. Only what a storage SCP needs is implemented: any other
DIMSE message or an unexpected PDU aborts the association.

Bounded by design (docs/admin.md, "Listener limits"): every PDU length and the dataset
of one C-STORE are checked against limits before a byte is buffered; timeouts are
deadlines per phase (the A-ASSOCIATE-RQ, the wait for the next message, one message),
so a peer that sends one byte at a time cannot hold a connection; buffers are allocated
after association; connections not yet associated, associations in all and per peer
address are capped. Refusals are one log line each, rate-limited; peer text in logs is
escaped (dicomnode.logsafe).
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from typing import Callable, NamedTuple

from pydicom.filereader import read_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from .config import NodeSection
from .header import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from .logsafe import RateLimitedLog, peer_text
from .tls import subject_problem

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Largest A-ASSOCIATE-RQ we read (a request with 128 contexts is ~15 kB).
MAX_ASSOCIATE_RQ = 1 << 20
#: First size of the PDU buffer: headers and small PDUs; grows up to the PDU limit.
INITIAL_BUFFER = 1 << 16

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101
SOP_CLASS_NOT_SUPPORTED = 0x0122

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

#: (transfer syntax UID, SOP class, SOP instance, dataset bytes, calling AE) ->
#: (DICOM status, bookkeeping to run after the response is sent, or None).
#: (transfer syntax, SOP class, SOP instance, dataset, calling AE, the association) -> (status, bookkeeping)
StoreFn = Callable[[str, str, str, memoryview, str, object], "tuple[int, Callable[[], None] | None]"]
#: Told when an association ends: (the association, whether the peer released it normally).
EndFn = Callable[[object, bool], None]


class _Abort(Exception):
    """Leave the association with an A-ABORT (reason is for the log only)."""


def _abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    return _PDU_HEADER.pack(0x07, 0, 4) + bytes((0, 0, source, reason))


# -- command set (Implicit VR Little Endian) -------------------------------------------------------


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _uid(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_response(command: int, msg_id: int, status: int, sop_class: str, sop_uid: str = "") -> bytes:
    """A C-ECHO-RSP or C-STORE-RSP command set, group length first (PS3.7 E.1)."""
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class)),
            _element(0x0100, struct.pack("<H", command)),
            _element(0x0120, struct.pack("<H", msg_id)),
            _element(0x0800, struct.pack("<H", NO_DATASET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, _uid(sop_uid)) if sop_uid else b"",
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


class Command(NamedTuple):
    """The command elements we use of one DIMSE request."""

    field: int
    msg_id: int
    sop_class: str
    sop_uid: str
    has_data: bool


def decode_command(raw: bytes) -> Command:
    """The command elements we use, from an Implicit VR Little Endian command set.
    Raises _Abort for a command set that cannot be read or whose UIDs are not ASCII (a UID
    we could not even echo back in the response; found by the fuzz test)."""
    try:
        ds = read_dataset(io.BytesIO(raw), True, True)
        cmd = Command(
            field=int(ds.get("CommandField", -1)),
            msg_id=int(ds.get("MessageID", 0)),
            sop_class=str(ds.get("AffectedSOPClassUID", "") or "").rstrip("\x00 "),
            sop_uid=str(ds.get("AffectedSOPInstanceUID", "") or "").rstrip("\x00 "),
            has_data=int(ds.get("CommandDataSetType", NO_DATASET)) != NO_DATASET,
        )
    except Exception as e:  # pydicom raises many types on garbage: one line, no traceback
        raise _Abort(f"malformed command set ({type(e).__name__})") from None
    if not (cmd.sop_class.isascii() and cmd.sop_uid.isascii()):
        raise _Abort("malformed command set (a UID that is not ASCII)")
    return cmd


# -- one association -----------------------------------------------------------------------------


class _Association:
    """Reads PDUs from one socket and answers them; never raises out of ``run``."""

    def __init__(self, sock: socket.socket, server: "FastServer") -> None:
        self.sock = sock
        self.server = server
        self.node = server.node
        self.peer_max = 0  # peer's max PDU length (0 = unlimited)
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted id -> (abstract, transfer syntax)
        self.calling_ae = ""
        self.address = _peer_address(sock)
        # One buffer for every PDU body, grown on demand: no allocation per PDU on the hot
        # path, and nothing large for a connection that never associates.
        self.buf = bytearray(INITIAL_BUFFER)
        self.max_body = (self.node.max_pdu or 64 * 2**20) + 65536
        self.max_data = int(self.node.max_instance_mb) * 2**20
        self.data = bytearray(0)  # dataset of the C-STORE being received, reused
        self.data_len = 0
        self.deadline = time.monotonic() + float(self.node.association_timeout_s)

    # socket helpers
    def _recv_exact(self, n: int) -> memoryview:
        if n > len(self.buf):
            self.buf = bytearray(n)
        view = memoryview(self.buf)[:n]
        self._fill(view)
        return view

    def _fill(self, view: memoryview) -> None:
        """Receive exactly len(view) bytes into ``view`` before ``self.deadline``."""
        got, n = 0, len(view)
        while got < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("deadline passed")
            self.sock.settimeout(left)
            r = self.sock.recv_into(view[got:], n - got)
            if r == 0:
                raise ConnectionError("peer closed the connection")
            got += r

    def _read_pdu(self, limit: int) -> tuple[int, memoryview]:
        kind, _, length = _PDU_HEADER.unpack(self._recv_exact(6))
        # A peer that ignores our max PDU must not make us allocate gigabytes.
        if length > limit:
            raise _Abort(f"PDU of {length} bytes exceeds our limit")
        return kind, self._recv_exact(length)

    def _send_command(self, ctx_id: int, command: bytes) -> None:
        # A PDV carries at most peer_max - 6 bytes of fragment (4 length + 2 header inside the PDU).
        room = (self.peer_max - 6) if self.peer_max else len(command)
        room = max(room, 1)
        out = []
        for start in range(0, len(command), room):
            frag = command[start : start + room]
            last = start + room >= len(command)
            pdv = _PDV_HEADER.pack(len(frag) + 2, ctx_id, 0x03 if last else 0x01) + frag
            out.append(_PDU_HEADER.pack(0x04, 0, len(pdv)) + pdv)
        self.sock.sendall(b"".join(out))

    # phases
    def _who(self) -> str:
        return f"{peer_text(self.calling_ae, 16) or 'peer'} ({self.address})"

    def run(self) -> None:
        try:
            if not self._associate():
                return
            self.server.associated(self)
            self.server.audit(
                "association",
                "accepted",
                calling_ae=self.calling_ae,
                address=self.address,
                tls=self.server.ssl_context is not None,
            )
            self._serve()
        except _Abort as e:
            self.server.refusals.warning("association with %s aborted: %s", self._who(), peer_text(str(e), 200))
            self._try_send(_abort_pdu())
        except socket.timeout:
            self.server.refusals.warning(
                "association with %s timed out (%s phase); aborting",
                self._who(),
                "association" if not self.contexts else "message",
            )
            self._try_send(_abort_pdu())
        except (ConnectionError, OSError) as e:
            log.info("association with %s ended: %s", self._who(), peer_text(str(e), 200))
        except Exception:  # a bug must not kill the server thread silently
            log.exception("association with %s failed; aborting", self._who())
            self._try_send(_abort_pdu())

    def _try_send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _reject(self, result: int, source: int, reason: int, why: str) -> bool:
        self.server.refusals.warning("association from %s refused: %s", self.address, why)
        self.server.audit(
            "association",
            "refused",
            calling_ae=self.calling_ae,
            address=self.address,
            tls=self.server.ssl_context is not None,
            reason=why,
        )
        prim = A_ASSOCIATE()
        prim.result, prim.result_source, prim.diagnostic = result, source, reason
        rj = A_ASSOCIATE_RJ()
        rj.from_primitive(prim)
        self._try_send(rj.encode())
        return False

    def _associate(self) -> bool:
        kind, body = self._read_pdu(MAX_ASSOCIATE_RQ)
        if kind != 0x01:
            raise _Abort(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}")
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(_PDU_HEADER.pack(kind, 0, len(body)) + bytes(body))
            prim = rq.to_primitive()
            self.calling_ae = str(prim.calling_ae_title).strip()
            called = str(prim.called_ae_title).strip()
        except Exception as e:  # pynetdicom raises anything on garbage: one line, no traceback
            raise _Abort(f"malformed A-ASSOCIATE-RQ ({type(e).__name__})") from None
        allowed = [a.strip() for a in self.node.allowed_calling_ae_titles]
        # Reasons as pynetdicom gives them (PS3.8 9.3.4): permanent, service user, 3 / 7.
        if called != self.node.ae_title.strip():
            return self._reject(0x01, 0x01, 0x07, f"called AE {peer_text(called, 16)} is not ours")
        if allowed and self.calling_ae not in allowed:
            return self._reject(0x01, 0x01, 0x03, f"calling AE {peer_text(self.calling_ae, 16)} is not allowed")
        mismatch = subject_problem(self.node, self.sock, self.calling_ae) or self.node.peer_refusal(
            self.calling_ae, self.address
        )
        if mismatch:
            return self._reject(0x01, 0x01, 0x03, peer_text(mismatch, 120))
        if rq.protocol_version != 0x0001:
            return self._reject(0x01, 0x02, 0x02, f"protocol version {rq.protocol_version}")
        low = self.server.space_problem()
        if low:  # transient, service provider (presentation), local limit exceeded
            return self._reject(0x02, 0x03, 0x02, low)
        refused = self.server.acquire_slot(self.address, self.calling_ae)
        if refused:  # transient, service provider (presentation), local limit exceeded
            return self._reject(0x02, 0x03, 0x02, refused)
        self.holds_slot = True
        self.peer_max = int(prim.maximum_length_received or 0)

        accepted, _roles = negotiate_as_acceptor(
            prim.presentation_context_definition_list, self.server.supported_contexts
        )
        for cx in accepted:
            if cx.result == 0x00 and cx.context_id is not None:
                self.contexts[int(cx.context_id)] = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))

        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title = prim.calling_ae_title
        ac.called_ae_title = prim.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = accepted
        ml = MaximumLengthNotification()
        ml.maximum_length_received = self.node.max_pdu
        ic = ImplementationClassUIDNotification()
        ic.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        iv = ImplementationVersionNameNotification()
        iv.implementation_version_name = IMPLEMENTATION_VERSION
        ac.user_information = [ml, ic, iv]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())
        return True

    def _serve(self) -> None:
        # PDVs are received straight into their destination (command or dataset buffer):
        # a 0.5 MB image is copied once, by the kernel, and never again before the write.
        command = bytearray()
        cmd: Command | None = None
        ctx_id = 0
        self.data_len = 0
        idle = float(self.node.idle_timeout_s)
        per_message = float(self.node.message_timeout_s)
        in_message = False
        while True:
            if not in_message:  # waiting for the next message: the idle limit
                self.deadline = time.monotonic() + idle
            kind, _, length = _PDU_HEADER.unpack(self._recv_exact(6))
            if length > self.max_body:
                raise _Abort(f"PDU of {length} bytes exceeds our limit")
            if kind == 0x04 and not in_message:  # a message starts: its whole time is bounded
                in_message = True
                self.deadline = time.monotonic() + per_message
            if kind != 0x04:
                self._recv_exact(length)
                if kind == 0x05:  # A-RELEASE-RQ
                    self.sock.sendall(_RELEASE_RP)
                    self.released = True
                    return
                if kind == 0x07:  # A-ABORT from the peer
                    log.info("association with %s aborted by the peer", self.calling_ae)
                    return
                raise _Abort(f"unexpected PDU type 0x{kind:02X}")
            remaining = length
            while remaining > 0:
                if remaining < 6:
                    raise _Abort("truncated PDV")
                pdv_len, pdv_ctx, mch = _PDV_HEADER.unpack(self._recv_exact(6))
                if pdv_len < 2 or pdv_len + 4 > remaining:
                    raise _Abort("bad PDV length")
                if pdv_ctx not in self.contexts:
                    raise _Abort(f"PDV on presentation context {pdv_ctx}, which was not accepted")
                remaining -= 4 + pdv_len
                size = pdv_len - 2
                if mch & 0x01:  # command fragment
                    if cmd is not None:
                        raise _Abort("command fragment while a dataset was expected")
                    if len(command) + size > 65536:
                        raise _Abort("command set too long")
                    command += self._recv_exact(size)
                    if mch & 0x02:
                        cmd = decode_command(bytes(command))
                        command.clear()
                        ctx_id = pdv_ctx
                        self.data_len = 0
                        if not cmd.has_data:
                            self._dispatch(ctx_id, cmd, None)
                            cmd = None
                            in_message = False
                else:  # dataset fragment
                    if cmd is None or pdv_ctx != ctx_id:
                        raise _Abort("dataset fragment without its command")
                    self._recv_data(size)
                    if mch & 0x02:
                        self._dispatch(ctx_id, cmd, memoryview(self.data)[: self.data_len])
                        cmd = None
                        in_message = False

    def _recv_data(self, n: int) -> None:
        end = self.data_len + n
        if end > self.max_data:  # checked before the buffer grows: nothing is allocated for it
            raise _Abort(f"dataset larger than {self.node.max_instance_mb} MB")
        if end > len(self.data):
            # A new buffer rather than a resize: a view of the old one may still exist.
            grown = bytearray(max(end, 2 * len(self.data)))
            grown[: self.data_len] = memoryview(self.data)[: self.data_len]
            self.data = grown
        self._fill(memoryview(self.data)[self.data_len : end])
        self.data_len = end

    def _dispatch(self, ctx_id: int, cmd: Command, data: memoryview | None) -> None:
        field, msg_id, sop_class, sop_uid = cmd.field, cmd.msg_id, cmd.sop_class, cmd.sop_uid
        abstract = self.contexts[ctx_id][0]
        if field in (C_ECHO_RQ, C_STORE_RQ) and sop_class != abstract:
            # PS3.7 9.1.1.1.2 / 9.3.1: the SOP class must be the context's abstract syntax.
            self.server.refusals.warning(
                "%s: %s of SOP class %s on the presentation context of %s refused (0x0122)",
                self._who(),
                "C-STORE" if field == C_STORE_RQ else "C-ECHO",
                peer_text(sop_class, 64),
                abstract,
            )
            reply = C_STORE_RSP if field == C_STORE_RQ else C_ECHO_RSP
            self._send_command(
                ctx_id,
                encode_response(
                    reply, msg_id, SOP_CLASS_NOT_SUPPORTED, sop_class, sop_uid if field == C_STORE_RQ else ""
                ),
            )
            return
        if field == C_ECHO_RQ and data is None:
            self._send_command(ctx_id, encode_response(C_ECHO_RSP, msg_id, 0x0000, sop_class))
        elif field == C_STORE_RQ and data is not None:
            ts = self.contexts[ctx_id][1]
            status, after = self.server.store_fn(ts, sop_class, sop_uid, data, self.calling_ae, self)
            try:
                self._send_command(ctx_id, encode_response(C_STORE_RSP, msg_id, status, sop_class, sop_uid))
            finally:
                # Bookkeeping (the file behind the journal, the database record) runs once
                # the answer is on its way, while the peer already sends the next image;
                # the instance was durable before it. Also when the answer could not be sent.
                if after is not None:
                    after()
        else:
            raise _Abort(f"unsupported DIMSE message 0x{field:04X}")


# -- the server ----------------------------------------------------------------------------------


def _peer_address(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "?"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        server: FastServer = self.server  # type: ignore[assignment]
        if not server.admit_pending():
            server.refusals.warning(
                "connection from %s closed: %d connections are already waiting to associate",
                _peer_address(sock),
                server.node.max_pending_connections,
            )
            return  # socketserver closes the socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # responses are small
        if server.ssl_context is not None:
            # DICOM TLS: the handshake (and the client certificate check) before any DICOM,
            # within the association deadline. The TLS socket takes over the descriptor.
            peer = _peer_address(sock)
            try:
                sock.settimeout(float(server.node.association_timeout_s))
                sock = server.ssl_context.wrap_socket(sock, server_side=True)
            except (OSError, ValueError) as e:
                server.leave_pending()
                why = peer_text(str(getattr(e, "reason", None) or e), 120)
                server.refusals.warning("TLS handshake with %s failed: %s", peer, why)
                server.audit("association", "refused", address=peer, tls=True, reason=f"TLS handshake failed: {why}")
                return
        assoc = _Association(sock, server)
        server.track(sock, True)
        try:
            assoc.run()
        finally:
            if server.end_fn is not None:
                try:
                    server.end_fn(assoc, bool(getattr(assoc, "released", False)))
                except Exception:  # bookkeeping: the quiet period completes the series anyway
                    log.exception("association end handling failed")
            if not getattr(assoc, "counted_associated", False):
                server.leave_pending()
            if getattr(assoc, "holds_slot", False):
                server.release_slot(assoc.address, assoc.calling_ae)
            server.track(sock, False)
            if sock is not self.request:  # the TLS socket: socketserver only closes the raw one
                try:
                    sock.close()
                except OSError:
                    pass


class FastServer(socketserver.ThreadingTCPServer):
    """Accept loop; each association runs in its own daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        node: NodeSection,
        store_fn: StoreFn,
        storage_contexts: list[PresentationContext],
        end_fn: EndFn | None = None,
        ssl_context: "ssl.SSLContext | None" = None,
        port: int | None = None,
        audit: "Callable[..., None] | None" = None,
        space_problem: "Callable[[], str] | None" = None,
    ) -> None:
        """``port``: where to listen (default ``node.port``; the TLS listener passes ``tls_port``);
        ``audit``: told of every association accepted or refused (dicomnode.audit);
        ``space_problem``: why new associations are refused now (the disk watermark), '' if not."""
        self.node = node
        self.audit = audit or (lambda *args, **kwargs: None)
        self.space_problem: Callable[[], str] = space_problem or (lambda: "")
        self.store_fn = store_fn
        self.end_fn = end_fn
        #: DICOM TLS (dicomnode.tls): every connection is wrapped before it associates.
        self.ssl_context = ssl_context
        self.supported_contexts = storage_contexts
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._active = 0
        self._per_address: dict[str, int] = {}
        self._per_ae: dict[str, int] = {}
        self._pending = 0
        #: Refused and aborted associations: one line each, at most 20 a minute.
        self.refusals = RateLimitedLog(log, burst=20, window_s=60.0)
        super().__init__((node.bind_address, node.port if port is None else port), _Handler)

    def stats(self) -> dict[str, int]:
        """Associations open now, connections waiting to associate, refusals and aborts so far."""
        with self._lock:
            return {"active": self._active, "pending": self._pending, "refused": self.refusals.total}

    def admit_pending(self) -> bool:
        """Count a new connection as pending (not associated); False when the cap is reached."""
        with self._lock:
            if self._pending >= self.node.max_pending_connections:
                return False
            self._pending += 1
            return True

    def leave_pending(self) -> None:
        with self._lock:
            self._pending -= 1

    def associated(self, assoc: _Association) -> None:
        """An association is established: it no longer counts as pending."""
        assoc.counted_associated = True  # type: ignore[attr-defined]
        self.leave_pending()

    def acquire_slot(self, address: str, calling_ae: str = "") -> str:
        """Take an association slot for ``address`` and ``calling_ae``; '' when granted,
        else why not. Senders the configuration names may use the reserved slots too."""
        node = self.node
        with self._lock:
            limit = node.max_associations
            if node.reserved_associations and not node.reserved_sender(calling_ae):
                limit -= node.reserved_associations
            if self._active >= limit:
                return (
                    f"too many associations ({self._active} open; {node.reserved_associations} of "
                    f"{node.max_associations} kept for reserved_for)"
                    if limit < node.max_associations
                    else f"too many associations ({node.max_associations})"
                )
            per = node.max_associations_per_address
            if per and self._per_address.get(address, 0) >= per:
                return f"too many associations from {address} ({per})"
            per_ae = node.max_associations_per_ae
            if per_ae and self._per_ae.get(calling_ae, 0) >= per_ae:
                return f"too many associations as {peer_text(calling_ae, 16)} ({per_ae})"
            self._active += 1
            self._per_address[address] = self._per_address.get(address, 0) + 1
            self._per_ae[calling_ae] = self._per_ae.get(calling_ae, 0) + 1
            return ""

    def release_slot(self, address: str, calling_ae: str = "") -> None:
        with self._lock:
            self._active -= 1
            for counts, key in ((self._per_address, address), (self._per_ae, calling_ae)):
                left = counts.get(key, 1) - 1
                if left > 0:
                    counts[key] = left
                else:
                    counts.pop(key, None)

    def track(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            (self._open.add if opened else self._open.discard)(sock)

    def close_associations(self) -> None:
        """Cut every open association (as pynetdicom's server shutdown does)."""
        with self._lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.sendall(_abort_pdu(0x00, 0x00))
            except OSError:
                pass
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
