"""The write-ahead journal of received instances (dicomnode.journal): append and replay, a
torn tail, group commit over several threads, checkpoint and recycling, replay after a
simulated crash. No timing is asserted."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dicomnode.errors import InvalidUIDError
from dicomnode.journal import HEADER_BYTES, GroupCommit, Journal, JournalError
from dicomnode.store import InstanceStore

SEGMENT = 256 * 1024  # small segments: a few records each


def rel(i: int) -> str:
    return f"1.2.3/1.2.3.4/1.2.3.4.{i + 1}.dcm"


def body(i: int, size: int = 20_000) -> bytes:
    return bytes([i % 251]) * size


def crash(journal: Journal) -> None:
    """What a SIGKILL leaves: the threads stop, nothing is checkpointed or closed cleanly."""
    for lane in journal._lanes:
        lane.commit.close()
    with journal._lock:
        journal._closing = True
        journal._lock.notify_all()
    journal._checkpointer.join()
    for seg in journal._segments:
        if seg.fd >= 0:
            os.close(seg.fd)


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage", 0)


def open_journal(tmp_path: Path, store: InstanceStore) -> Journal:
    return Journal(tmp_path / "journal", store.resolve, SEGMENT)


def test_append_then_replay_materialises_every_record(tmp_path, store):
    journal = open_journal(tmp_path, store)
    for i in range(3):
        journal.append(rel(i), [b"head", body(i)])  # durable; no file written yet
    assert not list(store.root.rglob("*.dcm"))
    crash(journal)
    again = open_journal(tmp_path, store)
    assert again.replayed == 3
    for i in range(3):
        assert store.resolve(rel(i)).read_bytes() == b"head" + body(i)
    again.close()
    assert open_journal(tmp_path, store).replayed == 0  # checkpointed at replay


def test_a_torn_tail_is_ignored(tmp_path, store):
    journal = open_journal(tmp_path, store)
    for i in range(2):
        journal.append(rel(i), [body(i)])
    seg = journal._lanes[0].active  # this thread's lane (the first to append)
    assert seg is not None
    last = seg.records[-1]
    crash(journal)
    # The last record half written: its bytes partly overwritten, as a power loss can leave it.
    with open(seg.path, "r+b") as f:
        f.seek(last.offset + 100)
        f.write(b"\0" * 1000)
    again = open_journal(tmp_path, store)
    assert again.replayed == 1
    assert store.resolve(rel(0)).read_bytes() == body(0)
    assert not store.resolve(rel(1)).exists()
    again.close()


def test_the_newest_record_of_a_path_wins_at_replay(tmp_path, store):
    journal = open_journal(tmp_path, store)
    journal.append(rel(0), [b"first"])
    journal.append(rel(0), [b"second"])
    crash(journal)
    open_journal(tmp_path, store).close()
    assert store.resolve(rel(0)).read_bytes() == b"second"


def test_group_commit_covers_several_threads(tmp_path, store):
    journal = open_journal(tmp_path, store)
    threads, per_thread = 8, 6
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def send(t: int) -> None:
        try:
            start.wait()
            for k in range(per_thread):
                i = t * per_thread + k
                journal.materialise(journal.append(rel(i), [body(i, 4000)]), [body(i, 4000)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    appended = threads * per_thread
    # Every append waited for a flush; flushes were shared (never more than appends).
    assert 1 <= journal.flushes <= appended
    # The 8 threads were spread over the 4 lanes, two each.
    assert all(lane.commit.flushes for lane in journal._lanes)
    for i in range(appended):
        assert store.resolve(rel(i)).read_bytes() == body(i, 4000)
    journal.close()


def test_group_commit_shares_a_flush_between_waiters(tmp_path, store):
    """Two appenders written while a flush is held up are both covered by the next one
    (one flush thread, so that the next flush waits for the first)."""
    journal = Journal(tmp_path / "journal", store.resolve, SEGMENT, lanes=1)
    commit = journal._lanes[0].commit
    real = commit._flush
    gate, entered = threading.Event(), threading.Event()

    def slow_flush(fds):
        entered.set()
        gate.wait()
        return real(fds)

    commit._flush = slow_flush  # type: ignore[method-assign]
    first = threading.Thread(target=journal.append, args=(rel(0), [b"a"]))
    first.start()
    entered.wait()  # flush 1 is running (for record 0)
    later = [threading.Thread(target=journal.append, args=(rel(i), [b"b"])) for i in (1, 2)]
    for t in later:
        t.start()
    with commit._cond:
        commit._cond.wait_for(lambda: commit.waiting == 3)
        assert commit._wanted == 2  # both later appenders wait for flush 2
    commit._flush = real  # type: ignore[method-assign]
    gate.set()
    for t in [first, *later]:
        t.join()
    assert commit.flushes == 2
    journal.close()


def test_a_full_segment_is_checkpointed_and_recycled(tmp_path, store):
    journal = Journal(tmp_path / "journal", store.resolve, SEGMENT, checkpoint_idle_s=0.0)
    per_segment = (SEGMENT - HEADER_BYTES) // 20_100
    n = 3 * per_segment  # fills two segments, the third is active
    for i in range(n):
        journal.materialise(journal.append(rel(i), [body(i)]), [body(i)])
    with journal._lock:
        journal._lock.wait_for(lambda: journal.checkpoints >= 2 and not journal._sealed, 120)
    assert journal.checkpoints >= 2
    assert not journal._sealed
    # Recycled segments are reused: the journal did not grow by a segment per fill.
    assert len(list((tmp_path / "journal").glob("segment-*.wal"))) <= 4
    for i in range(n):
        assert store.resolve(rel(i)).read_bytes() == body(i)
    journal.close()


def test_replay_after_a_crash_materialises_what_was_not_written(tmp_path, store):
    """Files written for some records, none for others, a leftover temp file: after the
    crash every durable record is a whole file, and records already written are skipped."""
    journal = open_journal(tmp_path, store)
    records = [journal.append(rel(i), [body(i)]) for i in range(5)]
    for i in (0, 2):
        journal.materialise(records[i], [body(i)])
    leftover = store.resolve(rel(3)).parent / ".1.2.3.4.4.dead.tmp"
    leftover.write_bytes(b"half")
    crash(journal)
    again = open_journal(tmp_path, store)
    assert again.replayed == 3  # 0 and 2 were already there
    for i in range(5):
        assert store.resolve(rel(i)).read_bytes() == body(i)
    assert store.remove_temp_files() == 1
    again.close()


def test_replay_refuses_a_path_that_is_not_an_instance(tmp_path, store):
    journal = open_journal(tmp_path, store)
    journal.append("../../etc/x.dcm", [b"x"])
    crash(journal)
    again = open_journal(tmp_path, store)
    assert again.replayed == 0
    assert not (tmp_path / "etc").exists()
    again.close()
    with pytest.raises(InvalidUIDError):
        store.resolve("../../etc/x.dcm")


def test_a_closed_journal_refuses_appends(tmp_path, store):
    journal = open_journal(tmp_path, store)
    journal.close()
    with pytest.raises(JournalError):
        journal.append(rel(0), [b"x"])


def test_the_store_with_a_journal_keeps_its_guarantees(tmp_path):
    from test_store import encoded, info_of

    from dicomnode.synthetic import ct_datasets

    from node_helpers import small_volume

    store = InstanceStore(tmp_path / "storage", 0, journal_dir=tmp_path / "journal", journal_segment_mb=1)
    ds = ct_datasets(small_volume(1, 32))[0]
    info = info_of(ds)
    path, write = store.store_durable(info, b"meta", encoded(ds))
    assert not path.exists()  # durable in the journal; the file comes behind it
    write()
    assert path.read_bytes() == b"meta" + encoded(ds)
    store.store(info, b"meta", encoded(ds))
    assert store.duplicates == {"identical": 1, "different": 0}
    store.close()
    assert path.read_bytes() == b"meta" + encoded(ds)


def test_during_a_burst_full_segments_wait_for_their_checkpoint(tmp_path, store):
    """With no quiet moment, sealed segments are checkpointed only beyond ``max_sealed``."""
    journal = Journal(tmp_path / "journal", store.resolve, SEGMENT, checkpoint_idle_s=3600.0, max_sealed=1)
    per_segment = (SEGMENT - HEADER_BYTES) // 20_100
    for i in range(4 * per_segment):
        journal.materialise(journal.append(rel(i), [body(i)]), [body(i)])
    with journal._lock:
        journal._lock.wait_for(lambda: len(journal._sealed) <= 1, 120)
        assert len(journal._sealed) == 1  # the newest full one waits; the older were recycled
    assert journal.checkpoints >= 1
    journal.close()  # checkpoints the rest
    assert journal.checkpoints >= 3


def test_an_instance_written_directly_is_not_replaced_by_an_older_journaled_copy(tmp_path):
    """Too large for a segment: the store writes it directly and marks that in the journal."""
    from dicomnode.header import InstanceInfo

    store = InstanceStore(tmp_path / "storage", 0, journal_dir=tmp_path / "journal", journal_segment_mb=1)
    assert store.journal is not None
    info = InstanceInfo("1.2.3.4.5", "1.2.3.4", "1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    store.store(info, b"meta", b"small")
    large = b"L" * (2 * 2**20)
    path = store.store(info, b"meta", large)  # a re-send, larger than a segment
    crash(store.journal)
    InstanceStore(tmp_path / "storage", 0, journal_dir=tmp_path / "journal", journal_segment_mb=1).close()
    assert path.read_bytes() == b"meta" + large


def test_a_failed_flush_fails_every_later_append(tmp_path, store):
    """After an fdatasync error nothing may be answered as durable (the kernel may have
    dropped the pages it could not write)."""
    journal = Journal(tmp_path / "journal", store.resolve, SEGMENT, lanes=1)
    commit = journal._lanes[0].commit

    def failing(fds):
        return OSError(5, "Input/output error")

    commit._flush = failing  # type: ignore[method-assign]
    with pytest.raises(JournalError):
        journal.append(rel(0), [b"x"])
    commit._flush = GroupCommit._flush  # type: ignore[method-assign]
    with pytest.raises(JournalError):
        journal.append(rel(1), [b"y"])
    journal.close()


def test_the_newest_record_wins_across_lanes_at_replay(tmp_path, store):
    """The same instance sent again on another association (another lane, a segment of a
    later generation first): replay keeps the one received last, not the later segment's."""
    journal = open_journal(tmp_path, store)
    journal.append(rel(9), [b"x"])  # this thread: lane 0, the older segment
    other = threading.Thread(target=journal.append, args=(rel(0), [b"first"]))  # lane 1, newer segment
    other.start()
    other.join()
    journal.append(rel(0), [b"second"])  # lane 0 again: the older segment, received last
    crash(journal)
    open_journal(tmp_path, store).close()
    assert store.resolve(rel(0)).read_bytes() == b"second"
