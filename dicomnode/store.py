"""Instance store: received bytes -> a durable DICOM file, and nothing else.

Layout: ``<storage>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

- Every UID is checked against the DICOM UID grammar (digits and dots, no leading zero in
  a component, at most 64 characters) *before* it becomes a path part, so no received
  value can name a file outside the storage folder ("../../x" and "1.2/../3" are not UIDs).
- A write is atomic and durable: a temp file in the target folder, write, flush, fsync,
  ``os.replace``, fsync of the folder. A reader (or a restart) sees the old file or the
  whole new one, never half of one; the caller answers success only after ``store``
  returned.
- With a journal (``journal_dir``; ``[node] journal``, on by default) the instance is
  durable once its record is in the write-ahead journal (``dicomnode.journal``: one
  ``fdatasync`` shared by every instance waiting at that moment); ``store_durable``
  returns then, with the step that writes the file (temp file and rename, no fsync),
  which the listener runs after its answer. The journal is the durable copy until its
  checkpoint fsyncs the files; at start it is replayed. Instances larger than a journal
  segment are written the direct way above.
- Duplicates (an instance with a SOP Instance UID already stored) replace the stored file:
  the last one received wins, as a PACS re-send is meant to correct the earlier copy.
- Free-disk guard: below ``min_free_mb`` the store refuses (``DiskFullError``, status
  0xA700) instead of filling the disk that the database also lives on.

The header elements the node needs are read by ``dicomnode.header`` (which also encodes
the file meta): the pixel data are never decoded here.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import DiskFullError, InvalidUIDError, StoreError
from .header import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, InstanceInfo, validate_uid
from .journal import TMP_SUFFIX, Journal, fsync_path

log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fsync_path(path, directory=True)


class InstanceStore:
    """Durable, atomic storage of received instances under ``root``."""

    def __init__(
        self,
        root: Path | str,
        min_free_mb: int = 500,
        journal_dir: Path | str | None = None,
        journal_segment_mb: int = 32,
    ) -> None:
        """``journal_dir``: the write-ahead journal's folder (None: every instance is written
        and fsynced directly); opening it replays what a stopped node left there."""
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
        self.journal = (
            Journal(journal_dir, self.resolve, journal_segment_mb * 2**20) if journal_dir is not None else None
        )

    def close(self) -> None:
        """Checkpoint and close the journal (a no-op without one)."""
        if self.journal is not None:
            self.journal.close()

    def resolve(self, rel: str) -> Path:
        """The absolute path of a relative instance path ``study/series/sop.dcm``, with every
        UID validated (the journal's replay resolves the paths it holds through this)."""
        parts = Path(rel).parts
        if len(parts) != 3 or not parts[2].endswith(".dcm"):
            raise InvalidUIDError(f"not an instance path: {rel[:200]!r}", STATUS_CANNOT_UNDERSTAND)
        return self.path_for(parts[0], parts[1], parts[2][: -len(".dcm")])

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The path (relative to root) an instance is stored at; validates every UID."""
        return Path(
            validate_uid(study_uid, "Study Instance UID"),
            validate_uid(series_uid, "Series Instance UID"),
            validate_uid(sop_uid, "SOP Instance UID") + ".dcm",
        )

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        path = (self.root / self.relative_path(study_uid, series_uid, sop_uid)).resolve()
        # Belt and braces: the UID grammar already excludes separators and '..'.
        if self.root not in path.parents:
            raise InvalidUIDError(f"refusing to write outside the storage folder: {path}", STATUS_CANNOT_UNDERSTAND)
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
                raise DiskFullError(
                    f"free disk space in {self.root} would fall below the "
                    f"{self.min_free_bytes // 2**20} MB reserve; free space or lower [node] "
                    f"min_free_mb",
                    STATUS_OUT_OF_RESOURCES,
                )
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
        """Write ``header`` (preamble + file meta) and ``dataset`` durably; return the path
        once the file is there.

        Raises DiskFullError (0xA700) when space is short, InvalidUIDError (0xC210) for a
        bad UID, StoreError (0xA700) for other OS errors. Never leaves a partial file.
        """
        path, write = self.store_durable(info, header, dataset)
        write()
        return path

    def store_durable(
        self, info: InstanceInfo, header: bytes, dataset: bytes | memoryview
    ) -> tuple[Path, Callable[[], None]]:
        """Make the instance durable (same errors as ``store``); return its path and the step
        that writes the file there (with the journal; a no-op without). Until that step ran
        the bytes of ``dataset`` must stay as they are."""
        self.check_free_space(len(header) + len(dataset))
        target = self.path_for(info.study_uid, info.series_uid, info.sop_uid)
        if target.exists():
            self._note_duplicate(info, target, header, dataset)
        journal = self.journal
        if journal is None or len(header) + len(dataset) > journal.max_record:
            self._write_durably(info, target, header, dataset)
            if journal is not None:
                try:  # an older journaled copy of this instance must not come back at replay
                    journal.note_direct(str(target.relative_to(self.root)))
                except OSError as e:
                    raise self._os_error(e, info, target) from e
            return target, _nothing
        try:
            rec = journal.append(str(target.relative_to(self.root)), (header, dataset))
        except OSError as e:
            raise self._os_error(e, info, target) from e
        return target, lambda: journal.materialise(rec, (header, dataset))

    def _write_durably(self, info: InstanceInfo, target: Path, header: bytes, dataset: bytes | memoryview) -> None:
        """The direct way: temp file, fsync, rename, fsync of the folder."""
        tmp = target.parent / f".{info.sop_uid}.{secrets.token_hex(4)}{TMP_SUFFIX}"
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
            raise self._os_error(e, info, target) from e

    def _os_error(self, e: OSError, info: InstanceInfo, target: Path) -> StoreError:
        """The DICOM-status error for an OS error while storing."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            with self._lock:
                self._free_bytes = 0
            return DiskFullError(f"disk full while storing {info.sop_uid}", STATUS_OUT_OF_RESOURCES)
        return StoreError(f"cannot write {target.name}: {e.strerror or e}", STATUS_OUT_OF_RESOURCES)

    def _note_duplicate(self, info: InstanceInfo, target: Path, header: bytes, dataset: bytes | memoryview) -> None:
        """Count and log an instance received again (it replaces the stored file)."""
        # The dataset bytes decide (the file meta names the sending AE, which may differ).
        try:
            stored = target.read_bytes()
            same = len(stored) >= len(dataset) and stored[len(stored) - len(dataset) :] == bytes(dataset)
        except OSError:
            same = False
        with self._lock:
            self.duplicates["identical" if same else "different"] += 1
        if same:
            log.info("instance %s of series %s received again, identical", info.sop_uid, info.series_uid)
        else:
            log.warning(
                "instance %s of series %s received again with different content: the stored file is replaced",
                info.sop_uid,
                info.series_uid,
            )

    def remove_temp_files(self) -> int:
        """Delete temp files a killed process left behind; returns how many."""
        count = 0
        for tmp in self.root.glob(f"*/*/.*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    def scan(self) -> Iterator[Path]:
        """Every stored instance file, relative to root."""
        for path in self.root.glob("*/*/*.dcm"):
            yield path.relative_to(self.root)
