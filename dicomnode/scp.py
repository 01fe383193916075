"""The DICOM listener: C-ECHO and C-STORE over our own upper layer (fastscp).

Association: the called AE title must be ours, and with a non-empty allow list only the
listed calling AE titles are accepted (the others are rejected during A-ASSOCIATE).

C-STORE: the received bytes are written as they came (file meta from the accepted
transfer syntax + the dataset bytes, never decoded), durably, and only then answered
with success. Only the identifying header elements are parsed. Every failure becomes a
DICOM status and a log line with UIDs only; the handler never raises.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any, Callable

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from . import fastscp
from .config import NodeSection
from .errors import StoreError
from .header import STATUS_PROCESSING_FAILURE, InstanceInfo, encode_file_meta, parse_header
from .logsafe import peer_text
from .store import InstanceStore
from .tls import server_context

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage, in order of preference.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: Called after an instance is durable: (header info, path relative to the storage root).
OnStored = Callable[[InstanceInfo, str], None]


def store_instance(
    store: InstanceStore, on_stored: OnStored, ts: str, sop_class: str, sop_uid: str, stream: Any, calling_ae: str
) -> int:
    """C-STORE: parse the header, store durably, record; return a DICOM status (never raises)."""
    status, record = store_durably(store, on_stored, ts, sop_class, sop_uid, stream, calling_ae)
    if record is not None:
        record()
    return status


def store_durably(
    store: InstanceStore, on_stored: OnStored, ts: str, sop_class: str, sop_uid: str, stream: Any, calling_ae: str
) -> tuple[int, Callable[[], None] | None]:
    """Parse the header and store durably; return the status and the bookkeeping still to
    do (``None`` after a failure): writing the file behind the journal, the record. Split
    so a listener can answer before it does them; it must run them before the bytes of
    ``stream`` change."""
    try:
        stream.seek(0)
        info = parse_header(stream, ts, sop_class, sop_uid)
        header = encode_file_meta(info.sop_class_uid, info.sop_uid, ts, calling_ae)
        path, write_file = store.store_durable(info, header, stream.getbuffer())
    except StoreError as e:
        # The reason may quote what the peer sent (UIDs, parse errors): escaped like the UID.
        log.warning("C-STORE %s refused with 0x%04X: %s", _safe(sop_uid), e.status, peer_text(str(e), 300))
        return e.status, None
    except Exception:  # the handler never raises: any bug becomes a failure status
        log.exception("C-STORE %s failed unexpectedly", _safe(sop_uid))
        return STATUS_PROCESSING_FAILURE, None

    def record() -> None:
        # With the journal the instance is durable there; its file is written now (before
        # the database names it), while the peer already sends the next one.
        write_file()
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
        chunk = bytes(self._view[self._pos : end])
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


def _safe(uid: str) -> str:
    return peer_text(uid, 64)


def storage_contexts(node: NodeSection) -> list[PresentationContext]:
    """Verification and every storage SOP class in our transfer syntaxes (what the
    listener accepts; fastscp negotiates with these)."""
    ae = AE(ae_title=node.ae_title)
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), list(ACCEPTED_TRANSFER_SYNTAXES))
    return list(ae.supported_contexts)


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

    The upper layer is our own one-thread-per-association ``fastscp`` (~2x faster per
    association than pynetdicom's reactors, which the listener no longer uses).
    """

    def __init__(
        self,
        node: NodeSection,
        store: InstanceStore,
        on_stored: OnStored,
        observe: Callable[[str, int, int], None] | None = None,
        on_released: Callable[[str], object] | None = None,
        audit: Callable[..., None] | None = None,
    ) -> None:
        """``on_released``: called with a series UID when the last association that sent it
        released normally (None: the quiet period alone completes series); ``audit``:
        told of associations and of the instances each stored (dicomnode.audit)."""
        self.node = node
        self.store = store
        self.on_stored = on_stored
        self.on_released = on_released
        self.audit = audit
        self.senders = SeriesSenders()
        #: Told (calling AE, dataset bytes, DICOM status) of every C-STORE (metrics).
        self.observe = observe
        self.contexts = storage_contexts(node)
        self._servers: dict[str, fastscp.FastServer] = {}

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
            calling = str(getattr(assoc, "calling_ae", "") or "")
            for series_uid, count in self.senders.counts(assoc).items():
                self.audit(
                    "instances_received",
                    "success" if released else "aborted",
                    calling_ae=calling,
                    series_uid=series_uid,
                    instances=count,
                )
        done = self.senders.ended(assoc, released)
        if self.on_released is None:
            return
        for series_uid in done:
            try:
                self.on_released(series_uid)
            except Exception:  # the quiet period still completes it
                log.exception("series %s: completion on release failed", _safe(series_uid))

    def _store_fast(
        self, ts: str, sop_class: str, sop_uid: str, data: memoryview, calling_ae: str, assoc: object = None
    ) -> tuple[int, Callable[[], None] | None]:
        status, after = store_durably(
            self.store, self._recorder(assoc), ts, sop_class, sop_uid, ViewStream(data), calling_ae
        )
        if self.observe is not None:
            self.observe(calling_ae, len(data), status)
        return status, after

    def stats(self) -> dict[str, int]:
        """Associations open now and refused/aborted so far, over both listeners."""
        total = {"active": 0, "refused": 0}
        for server in self._servers.values():
            counts = server.stats()
            total["active"] += counts["active"]
            total["refused"] += counts["refused"]
        return total

    def _space_problem(self) -> str:
        """The disk watermark ([node] refuse_associations_below_mb): '' above it."""
        floor = int(self.node.refuse_associations_below_mb) * 1024 * 1024
        if floor <= 0:
            return ""
        free = self.store.free_bytes()
        return (
            "" if free >= floor else (f"free disk space {free // 2**20} MB is below the {floor // 2**20} MB watermark")
        )

    def _make_server(self, port: int, tls: ssl.SSLContext | None) -> fastscp.FastServer:
        return fastscp.FastServer(
            self.node,
            self._store_fast,
            self.contexts,
            self._ended,
            ssl_context=tls,
            port=port,
            audit=self.audit,
            space_problem=self._space_problem,
        )

    def start(self) -> None:
        """The plain listener on ``port`` (unless 0) and the TLS one on ``tls_port`` (unless 0)."""
        wanted: list[tuple[str, int, ssl.SSLContext | None]] = []
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
            server.shutdown()  # stops accepting
            server.server_close()
            server.close_associations()
