"""Write-ahead journal of received instances: durable in one shared flush, files behind it.

Why: a durable per-instance file costs two fsyncs (the new file, then its folder: the
inode and the directory entry are metadata), ~0.9 ms per image on our disk when it is
quiet. Appending the same bytes to a file whose blocks are already written and calling
``os.fdatasync`` changes no metadata and cost ~0.35 ms there; and one flush covers every
instance waiting at that moment (group commit). What it gains on a loaded disk, on one
and on eight associations: docs/benchmarks.md.

- **Segments**: ``<journal>/segment-NNNN.wal``, ``segment_bytes`` each, zero-filled when
  made (so a record overwrites blocks that exist: no allocation, no metadata). A segment
  starts with a header naming its generation (a number that only grows; 0: a spare).
- **Records**: magic, CRC-32, the segment's generation, a sequence number (the order of
  appends over the whole journal), the instance's path relative to the storage root and
  its bytes (preamble, file meta, dataset).
- **Lanes**: ``lanes`` (4) segments are appended to at once, one per lane; each
  association's thread keeps one lane (round robin), so associations write and flush
  side by side on different files. Appends to one lane are serialised (a copy into the
  page cache), so that a flush covering one of its records covers every earlier one.
- **Group commit**: per lane one flush thread (``flushers``); an appender marks its
  segment dirty, wakes the flusher and waits (condition variable) for the first flush
  that *started* after its write (and the flushes before it). That flush is the record's
  durability: only then may success be answered. One flush covers every record of the
  lane waiting when it starts. After a failed fdatasync no append of that lane succeeds
  again (the page cache may have dropped the data).
- **Materialising**: the per-instance file is written behind the journal (temp file and
  rename, no fsync) by ``materialise``; until a checkpoint it is the journal that is durable.
- **Checkpoint**: a full segment, once its records are materialised, has those files and
  their folders fsynced, and is then recycled (its header set back to generation 0).
  It waits for a quiet moment (``checkpoint_idle_s``; then the lanes' segments are
  sealed too) unless more than ``max_sealed`` full segments wait, so that a burst's
  flushes do not share the disk with the files' fsyncs.
- **Replay** (``open``): every segment with a generation, oldest first; a record whose
  magic, generation or checksum fails ends that segment (a torn tail: never answered).
  The newest record per path (by sequence) wins; a file that already holds those bytes is
  skipped.
  Everything is then checkpointed and the segments are spares again.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
#: Relative path of an instance -> its absolute path; raises for a path that is not one of
#: ours (the store's UID validation: a replayed path is checked like a received one).
Resolve = Callable[[str], Path]

SEGMENT_MAGIC = b"DNJSEG01"
RECORD_MAGIC = b"DNJR"
_SEGMENT_HEADER = struct.Struct("<8sQI")  # magic, generation, crc32 of the generation
_RECORD_HEADER = struct.Struct("<4sIQQHI")  # magic, crc32, generation, sequence, path length, body length
HEADER_BYTES = 4096  # records start on the second page
TMP_SUFFIX = ".tmp"  # the store's temp-file suffix: leftovers are removed at start

PENDING, WRITING, DONE = 0, 1, 2


class JournalError(OSError):
    """The journal could not make a record durable (the instance must be refused)."""


@dataclass(eq=False)
class _Record:
    rel: str
    offset: int  # of the record header in its segment
    length: int  # of the body (the file's bytes)
    state: int = PENDING
    seq: int = 0  # order of appends over all lanes (the newest record of a path wins)


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int
    generation: int = 0
    end: int = HEADER_BYTES  # next free offset
    records: list[_Record] = field(default_factory=list)


def _segment_header(generation: int) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, generation, zlib.crc32(struct.pack("<Q", generation)))


def _read_generation(fd: int) -> int:
    """The generation in a segment's header; 0 for a spare or an unreadable header."""
    raw = os.pread(fd, _SEGMENT_HEADER.size, 0)
    if len(raw) < _SEGMENT_HEADER.size:
        return 0
    magic, generation, crc = _SEGMENT_HEADER.unpack(raw)
    if magic != SEGMENT_MAGIC or crc != zlib.crc32(struct.pack("<Q", generation)):
        return 0
    return int(generation)


def _payload_crc(rel: bytes, chunks: Sequence[Buffer]) -> int:
    crc = zlib.crc32(rel)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


def _record_header(generation: int, seq: int, rel: bytes, body_len: int, payload_crc: int) -> bytes:
    tail = struct.pack("<QQHI", generation, seq, len(rel), body_len)
    return _RECORD_HEADER.pack(RECORD_MAGIC, zlib.crc32(tail, payload_crc), generation, seq, len(rel), body_len)


def _pwrite_all(fd: int, buffers: Sequence[Buffer], offset: int) -> None:
    total = sum(len(b) for b in buffers)
    written = os.pwritev(fd, list(buffers), offset)
    if written < total:  # rare (a signal, a nearly full disk): write the rest plainly
        rest = b"".join(bytes(b) for b in buffers)[written:]
        while rest:
            n = os.pwrite(fd, rest, offset + written)
            if n <= 0:
                raise JournalError("short write to the journal")
            written, rest = written + n, rest[n:]


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file or a folder by name."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(target: Path, chunks: Sequence[Buffer]) -> None:
    """``target`` with the bytes of ``chunks``, atomically (temp file, rename), no fsync."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _pwrite_all(fd, chunks, 0)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _holds(target: Path, body: bytes) -> bool:
    """Whether ``target`` already holds exactly ``body``."""
    try:
        if target.stat().st_size != len(body):
            return False
        return target.read_bytes() == body
    except OSError:
        return False


def make_segment(path: Path, size: int) -> int:
    """A new zero-filled segment file, durable (file and folder); returns its open fd."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        zeros = bytes(1 << 20)
        for start in range(0, size, len(zeros)):
            os.pwrite(fd, zeros[: min(len(zeros), size - start)], start)
        os.fsync(fd)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd


class GroupCommit:
    """Group commit: a flush (fdatasync of every segment written since the last one began)
    covers every record written before it began. Up to ``flushers`` flushes run at once
    (``flushers`` threads), so that waiters that came during a flush need not wait for its
    end before theirs starts; on one association there is one flush at a time."""

    def __init__(self, flushers: int = 4) -> None:
        self._cond = threading.Condition()
        self._started = 0  # flushes begun
        self._done_upto = 0  # every flush up to this number has ended
        self._ended: set[int] = set()  # flushes ended after a flush still running
        self._wanted = 0  # the newest flush someone waits for
        self._dirty: set[int] = set()  # descriptors written since the last flush began
        self._failed: OSError | None = None  # after a failed fdatasync nothing is durable again
        self._closing = False
        self.flushes = 0  # fdatasync rounds (for tests and the benchmark)
        self.waiting = 0  # appenders waiting for a flush now
        self._threads = [
            threading.Thread(target=self._run, name=f"journal-flush-{i + 1}", daemon=True)
            for i in range(max(1, flushers))
        ]
        for thread in self._threads:
            thread.start()

    def wait_durable(self, fd: int) -> None:
        """Block until the first flush that began after this call (and every flush before
        it) has ended: it covered this call's write of ``fd``."""
        with self._cond:
            if self._closing:
                raise JournalError("the journal is closed")
            target = self._started + 1
            self._dirty.add(fd)
            self._wanted = max(self._wanted, target)
            self._cond.notify_all()
            self.waiting += 1
            while self._done_upto < target and self._failed is None:
                self._cond.wait()
            self.waiting -= 1
            failed = self._failed
        if failed is not None:
            # As after any fsync error, what the page cache held may be lost: refuse from now on.
            raise JournalError(f"journal flush failed: {failed.strerror}") from failed

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted <= self._started and not self._closing:
                    self._cond.wait()
                if self._wanted <= self._started:
                    return
                self._started += 1
                number, dirty, self._dirty = self._started, self._dirty, set()
            error = self._flush(dirty)
            with self._cond:
                if error is not None and self._failed is None:
                    self._failed = error
                self._ended.add(number)
                while self._done_upto + 1 in self._ended:
                    self._ended.discard(self._done_upto + 1)
                    self._done_upto += 1
                self.flushes += 1
                self._cond.notify_all()

    @staticmethod
    def _flush(fds: set[int]) -> OSError | None:
        for fd in fds:
            try:
                os.fdatasync(fd)
            except OSError as e:
                log.error("journal fdatasync failed: %s", e)
                return e
        return None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()


@dataclass(eq=False)
class _Lane:
    """One segment being appended to, its writers' lock and its group commit. Associations
    are spread over the lanes, so their flushes run side by side on different files."""

    commit: GroupCommit
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: _Segment | None = None


class Journal:
    """The journal in ``folder`` for the instance files that ``resolve`` names."""

    def __init__(
        self,
        folder: Path | str,
        resolve: Resolve,
        segment_bytes: int = 32 * 2**20,
        checkpoint_idle_s: float = 2.0,
        max_sealed: int = 8,
        lanes: int = 4,
        flushers: int = 1,
    ) -> None:
        """Full segments are checkpointed once no instance came for ``checkpoint_idle_s``
        (then the segment being filled too), or when more than ``max_sealed`` wait: during
        a burst the files are not fsynced while the journal's flushes need the disk."""
        self.folder = Path(folder)
        self.checkpoint_idle_s = float(checkpoint_idle_s)
        self.max_sealed = int(max_sealed)
        self._last_append = time.monotonic()
        self._draining = False
        self.folder.mkdir(parents=True, exist_ok=True)
        self.resolve = resolve
        self.segment_bytes = max(int(segment_bytes), 2 * HEADER_BYTES)
        #: Largest body a record may have; the store writes larger instances directly.
        self.max_record = self.segment_bytes - HEADER_BYTES - _RECORD_HEADER.size - 512
        self._lock = threading.Condition()
        # One file of a path written at a time, so the newest record wins; striped by path,
        # so that associations writing different instances do not wait for each other.
        self._file_locks = [threading.Lock() for _ in range(64)]
        self._segments: list[_Segment] = []
        self._spares: deque[_Segment] = deque()
        self._sealed: deque[_Segment] = deque()
        self._seq = 0
        self._thread_lane = threading.local()
        self._next_lane = 0
        self._latest: dict[str, _Record] = {}  # path -> its newest record not yet checkpointed
        self._generation = 0
        self._closing = False
        self.checkpoints = 0  # segments recycled (for tests)
        self.replayed = self._open_segments()
        self._lanes = [_Lane(GroupCommit(flushers)) for _ in range(max(1, lanes))]
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="journal-checkpoint", daemon=True)
        self._checkpointer.start()

    @property
    def flushes(self) -> int:
        """Flushes (fdatasync rounds) so far."""
        return sum(lane.commit.flushes for lane in self._lanes)

    def _body_at(self, seg: _Segment, rec: _Record) -> bytes:
        return os.pread(seg.fd, rec.length, rec.offset + _RECORD_HEADER.size + len(rec.rel.encode()))

    # -- start: open and replay ------------------------------------------------------------
    def _open_segments(self) -> int:
        """Open every segment, replay those in use, make them all spares; returns how many
        instances were materialised again."""
        for path in sorted(self.folder.glob(f"segment-*.wal{TMP_SUFFIX}")):
            path.unlink()  # a segment whose making was interrupted
        for path in sorted(self.folder.glob("segment-*.wal")):
            fd = os.open(path, os.O_RDWR)
            self._segments.append(_Segment(path, fd, os.fstat(fd).st_size, _read_generation(fd)))
        used = sorted((s for s in self._segments if s.generation), key=lambda s: s.generation)
        self._generation = max((s.generation for s in used), default=0)
        count = self._replay(used)
        for seg in list(self._segments):
            if seg.generation:
                self._recycle(seg)
            if seg.size == self.segment_bytes:
                self._spares.append(seg)
            else:  # made with another segment size: replayed, no longer used
                os.close(seg.fd)
                seg.path.unlink()
                self._segments.remove(seg)
        # Without a spare the checkpointer makes one at once, in the background.
        return count

    def _replay(self, used: list[_Segment]) -> int:
        """Materialise the newest record of each path (unless its file holds it); fsync."""
        latest: dict[str, tuple[_Segment, _Record]] = {}
        for seg in used:
            for rec in self._records_of(seg):
                if rec.rel not in latest or latest[rec.rel][1].seq < rec.seq:
                    latest[rec.rel] = (seg, rec)
                self._seq = max(self._seq, rec.seq)
        count = 0
        targets = []
        for rel, (seg, rec) in latest.items():
            if rec.length == 0:  # a marker: the newest copy was written directly (``note_direct``)
                continue
            try:
                target = self.resolve(rel)
            except Exception as e:  # a path that is not ours: never written
                log.error("journal record for %r refused at replay: %s", rel[:200], e)
                continue
            body = self._body_at(seg, rec)
            if not _holds(target, body):
                write_file(target, [body])
                count += 1
            targets.append(target)
        sync_files(targets)
        if count:
            log.warning("journal: %d instance(s) materialised again at start", count)
        return count

    def _records_of(self, seg: _Segment) -> Iterator[_Record]:
        """The valid records of a used segment, in order; they end at the first bad one."""
        offset = HEADER_BYTES
        while offset + _RECORD_HEADER.size <= seg.size:
            raw = os.pread(seg.fd, _RECORD_HEADER.size, offset)
            magic, crc, generation, seq, path_len, body_len = _RECORD_HEADER.unpack(raw)
            end = offset + _RECORD_HEADER.size + path_len + body_len
            if magic != RECORD_MAGIC or generation != seg.generation or end > seg.size:
                return
            payload = os.pread(seg.fd, path_len + body_len, offset + _RECORD_HEADER.size)
            rel = payload[:path_len]
            if crc != zlib.crc32(raw[8:], _payload_crc(rel, [payload[path_len:]])):
                return  # a torn tail
            yield _Record(rel.decode("utf-8", "replace"), offset, body_len, DONE, seq)
            offset = end

    # -- segments ----------------------------------------------------------------------------
    def _segment_path(self) -> Path:
        """A name for a new segment. Under the lock (or before the threads start)."""
        number = 1 + max((int(s.path.stem.split("-")[1]) for s in self._segments), default=0)
        return self.folder / f"segment-{number:04d}.wal"

    def _new_segment(self) -> _Segment:
        path = self._segment_path()
        seg = _Segment(path, make_segment(path, self.segment_bytes), self.segment_bytes)
        self._segments.append(seg)
        return seg

    def _activate(self, lane: _Lane) -> _Segment:
        """The next spare (or a new segment) becomes the one ``lane`` appends to. Under the lock."""
        seg = self._spares.popleft() if self._spares else self._new_segment()
        self._generation += 1
        seg.generation, seg.end, seg.records = self._generation, HEADER_BYTES, []
        os.pwrite(seg.fd, _segment_header(seg.generation), 0)  # durable with its first record
        lane.active = seg
        self._lock.notify_all()  # the checkpointer makes a spare if that was the last one
        return seg

    def _recycle(self, seg: _Segment) -> None:
        """Mark a checkpointed segment as a spare, durably."""
        os.pwrite(seg.fd, _segment_header(0), 0)
        os.fdatasync(seg.fd)
        for rec in seg.records:
            if self._latest.get(rec.rel) is rec:
                del self._latest[rec.rel]
        seg.generation, seg.end, seg.records = 0, HEADER_BYTES, []

    # -- appending ------------------------------------------------------------------------
    def append(self, rel: str, chunks: Sequence[Buffer]) -> _Record:
        """Write a record for the instance at ``rel`` with the bytes of ``chunks`` and return
        once it is durable. Raises JournalError (or OSError) when it cannot be made so."""
        body_len = sum(len(c) for c in chunks)
        if body_len > self.max_record:
            raise JournalError(f"an instance of {body_len} bytes does not fit a journal segment")
        rel_raw = rel.encode("utf-8")
        crc = _payload_crc(rel_raw, chunks)  # the costly part, outside any lock
        lane = self._lane()
        # The lane's writes are serialised, so a flush covering one of its records covers
        # every earlier one (replay ends a segment at its first bad record).
        with lane.lock:
            seg, rec = self._reserve(lane, rel, _RECORD_HEADER.size + len(rel_raw) + body_len, body_len)
            header = _record_header(seg.generation, rec.seq, rel_raw, body_len, crc)
            _pwrite_all(seg.fd, [header, rel_raw, *chunks], rec.offset)
        lane.commit.wait_durable(seg.fd)
        return rec

    def _lane(self) -> _Lane:
        """The calling thread's lane (one association is one thread): round robin."""
        lane = getattr(self._thread_lane, "lane", None)
        if lane is None:
            with self._lock:
                lane = self._lanes[self._next_lane % len(self._lanes)]
                self._next_lane += 1
            self._thread_lane.lane = lane
        return lane

    def _reserve(self, lane: _Lane, rel: str, need: int, body_len: int) -> tuple[_Segment, _Record]:
        """Room for a record in ``lane``'s segment (sealing a full one). Under the lane's lock."""
        with self._lock:
            if self._closing:
                raise JournalError("the journal is closed")
            seg = lane.active if lane.active is not None else self._activate(lane)
            if seg.end + need > seg.size:
                self._seal(lane)
                seg = self._activate(lane)
            self._seq += 1
            rec = _Record(rel, seg.end, body_len, PENDING if body_len else DONE, self._seq)
            seg.end += need
            seg.records.append(rec)
            self._latest[rel] = rec
            self._last_append = time.monotonic()
            return seg, rec

    def note_direct(self, rel: str) -> None:
        """The file at ``rel`` was just written durably without the journal (too large for a
        segment): a marker record keeps replay from putting an older journaled copy back."""
        self.append(rel, [])

    def _seal(self, lane: _Lane) -> None:
        """No more appends to ``lane``'s segment: the checkpointer takes it. Under the lane's
        lock (no write to it is under way) and the lock."""
        seg = lane.active
        if seg is None:
            return
        lane.active = None
        if seg.records:
            self._sealed.append(seg)
        else:  # nothing in it (its header may name a generation: no record will match)
            self._spares.append(seg)
        self._lock.notify_all()

    def materialise(self, rec: _Record, chunks: Sequence[Buffer]) -> None:
        """Write the instance file of ``rec`` (no fsync: the journal is durable). A failure
        is logged; the checkpoint writes the file from the journal then."""
        with self._lock:
            if rec.state != PENDING:
                return
            rec.state = WRITING
        state = PENDING
        try:
            self._write_newest(rec, chunks)
            state = DONE
        except Exception:
            log.exception("instance %s: file not written; the journal checkpoint will write it", rec.rel[:200])
        finally:
            with self._lock:
                rec.state = state
                self._lock.notify_all()

    def _write_newest(self, rec: _Record, chunks: Sequence[Buffer]) -> None:
        """Write ``rec``'s file unless a newer record of the same path exists (it wins)."""
        with self._file_locks[zlib.crc32(rec.rel.encode()) % len(self._file_locks)]:
            with self._lock:
                newest = self._latest.get(rec.rel, rec) is rec
            if newest:
                write_file(self.resolve(rec.rel), chunks)

    # -- checkpoint -------------------------------------------------------------------------
    def _checkpoint_loop(self) -> None:
        while True:
            with self._lock:
                seg, stop = self._next_work()
            if stop:
                return
            try:
                if seg is not None:
                    self.checkpoint(seg)
                else:
                    self._seal_if_quiet()
                self._keep_a_spare()
            except Exception:  # a sealed segment stays sealed: its records are still durable
                log.exception("journal checkpoint failed; retried in 5 s")
                with self._lock:
                    if self._closing:
                        return
                    self._lock.wait(5.0)

    def _next_work(self) -> tuple[_Segment | None, bool]:
        """Under the lock: wait for work; (the segment to checkpoint or None, whether to stop).
        None without stopping: a spare is to be made (the last one was taken)."""
        while True:
            if self._closing and not self._sealed:
                return None, True
            idle = time.monotonic() - self._last_append
            due = self._draining or idle >= self.checkpoint_idle_s
            if self._sealed and (due or len(self._sealed) > self.max_sealed):
                return self._sealed[0], False
            filling = any(lane.active is not None and lane.active.records for lane in self._lanes)
            if not self._spares and not self._closing or (due and filling):
                return None, False  # make a spare; seal the lanes' segments if still quiet
            pending = self._sealed or filling
            self._lock.wait(max(0.05, self.checkpoint_idle_s - idle) if pending else None)

    def _seal_if_quiet(self) -> None:
        """Quiet now (no append for ``checkpoint_idle_s``): seal what the lanes hold, so that
        the checkpoint covers what came so far."""
        for lane in self._lanes:
            with lane.lock, self._lock:
                quiet = self._draining or time.monotonic() - self._last_append >= self.checkpoint_idle_s
                if quiet and lane.active is not None and lane.active.records:
                    self._seal(lane)

    def checkpoint(self, seg: _Segment) -> None:
        """Materialise what is left of a sealed segment, fsync its files and folders, recycle it."""
        for rec in seg.records:
            self._materialise_from_journal(seg, rec)
        targets = []
        for rec in seg.records:
            with self._lock:
                newest = self._latest.get(rec.rel) is rec
            if newest:  # an older record's file was replaced: the newer one's checkpoint syncs it
                targets.append(self.resolve(rec.rel))
        sync_files(targets)
        with self._lock:
            self._recycle(seg)
            if self._sealed and self._sealed[0] is seg:
                self._sealed.popleft()
            self._spares.append(seg)
            self.checkpoints += 1
            self._lock.notify_all()

    def _materialise_from_journal(self, seg: _Segment, rec: _Record) -> None:
        """Make sure ``rec``'s file is written: wait for a writer, or write it from the segment."""
        with self._lock:
            while rec.state == WRITING:
                self._lock.wait()
            if rec.state == DONE:
                return
            rec.state = WRITING
        state = PENDING
        try:
            self._write_newest(rec, [self._body_at(seg, rec)])
            state = DONE
        finally:
            with self._lock:
                rec.state = state
                self._lock.notify_all()

    def _keep_a_spare(self) -> None:
        """Make a spare segment ahead of need (outside the lock) when none is left."""
        with self._lock:
            if self._spares or self._closing:
                return
            path = self._segment_path()
            seg = _Segment(path, -1, self.segment_bytes)
            self._segments.append(seg)  # reserves the name
        seg.fd = make_segment(path, self.segment_bytes)
        with self._lock:
            self._spares.append(seg)

    # -- stop -------------------------------------------------------------------------------
    def close(self, timeout_s: float = 60.0) -> None:
        """Checkpoint everything (for at most ``timeout_s``: what is left is replayed at the
        next start) and stop the threads; later appends are refused."""
        with self._lock:
            if self._closing:
                return
            self._draining = True
        for lane in self._lanes:
            with lane.lock, self._lock:
                self._seal(lane)
        with self._lock:
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._sealed, timeout_s)
            self._closing = True
            self._lock.notify_all()
        self._checkpointer.join()
        for lane in self._lanes:
            lane.commit.close()
        for seg in self._segments:
            if seg.fd >= 0:
                os.close(seg.fd)


def sync_files(targets: Sequence[Path]) -> None:
    """fsync each file, then their folders (series, study, storage root)."""
    folders: set[Path] = set()
    for target in targets:
        try:
            fsync_path(target)
        except FileNotFoundError:  # deleted since (housekeeping)
            continue
        folders.update((target.parent, target.parent.parent, target.parent.parent.parent))
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        try:
            fsync_path(folder, directory=True)
        except FileNotFoundError:  # a series folder deleted since
            continue
