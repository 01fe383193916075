"""Series assembler: quiet period, selection rules (data), late instances, skip reasons."""

from __future__ import annotations

import pytest

from dicomnode.config import SelectionSection
from dicomnode.db import Database
from dicomnode.header import InstanceInfo
from dicomnode.queue import JobQueue, JobState
from dicomnode.series import SeriesAssembler, SeriesState, select_instances, series_state

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
T0 = 1_000_000.0


def inst(
    i: int,
    series: str = "1.2.3",
    study: str = "1.2",
    modality: str = "CT",
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    patient: str = "p1",
    orientation: str = "1\\0\\0\\0\\1\\0",
    thickness: float | None = 1.0,
    body_part: str = "CHEST",
) -> InstanceInfo:
    return InstanceInfo(
        sop_uid=f"{series}.{i}",
        series_uid=series,
        study_uid=study,
        sop_class_uid=CT if modality == "CT" else MR,
        transfer_syntax="1.2.840.10008.1.2.1",
        modality=modality,
        image_type=image_type,
        body_part=body_part,
        slice_thickness=thickness,
        orientation=orientation,
        patient_key=patient,
    )


@pytest.fixture()
def env(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    queue = JobQueue(db)
    enqueued: list[int] = []
    asm = SeriesAssembler(db, queue, SelectionSection(min_slices=4), quiet_seconds=10, on_enqueued=enqueued.append)
    yield db, queue, asm, enqueued
    db.close()


def feed(asm, infos, t=T0):
    for k, info in enumerate(infos):
        asm.record_instance(info, f"{info.study_uid}/{info.series_uid}/{info.sop_uid}.dcm", received=t + k * 0.01)


def series_row(db, uid="1.2.3"):
    return db.query("SELECT * FROM series WHERE series_uid=?", (uid,))[0]


def test_quiet_period_completes_a_series_into_one_job(env):
    db, queue, asm, enqueued = env
    feed(asm, [inst(i) for i in range(5)])
    assert asm.complete_due(at=T0 + 5) == []  # not quiet long enough
    assert series_state(db, "1.2.3") == SeriesState.RECEIVING
    asm.record_instance(inst(5), "1.2/1.2.3/1.2.3.5.dcm", received=T0 + 9)  # resets the timer
    assert asm.complete_due(at=T0 + 15) == []
    assert asm.complete_due(at=T0 + 19.5) == ["1.2.3"]
    row = series_row(db)
    assert row["state"] == SeriesState.COMPLETE and row["instance_count"] == 6
    job = queue.get(enqueued[0])
    assert job.state == JobState.QUEUED and len(job.instances) == 6 and job.generation == 1
    assert asm.complete_due(at=T0 + 100) == []  # completed once only


def test_duplicate_instance_is_counted_once(env):
    db, queue, asm, enqueued = env
    feed(asm, [inst(i) for i in range(4)] + [inst(0)])
    asm.complete_due(at=T0 + 20)
    assert series_row(db)["instance_count"] == 4
    assert len(queue.get(enqueued[0]).instances) == 4


def test_late_instance_reopens_and_makes_a_new_generation(env):
    db, queue, asm, enqueued = env
    feed(asm, [inst(i) for i in range(4)])
    asm.complete_due(at=T0 + 20)
    asm.record_instance(inst(9), "1.2/1.2.3/1.2.3.9.dcm", received=T0 + 21)
    assert series_state(db, "1.2.3") == SeriesState.RECEIVING
    asm.complete_due(at=T0 + 40)
    assert len(enqueued) == 2
    first, second = queue.get(enqueued[0]), queue.get(enqueued[1])
    assert first.state == JobState.SKIPPED and "superseded" in first.reason  # it had not started
    assert second.generation == 2 and len(second.instances) == 5


@pytest.mark.parametrize(
    "infos,words",
    [
        ([inst(i, modality="MR") for i in range(5)], "modality MR"),
        ([inst(i) for i in range(3)], "too few slices: 3"),
        ([inst(i, image_type="ORIGINAL\\PRIMARY\\LOCALIZER") for i in range(5)], "localizer images only"),
        ([inst(i, patient="p1" if i % 2 else "p2") for i in range(5)], "disagree on the patient"),
        ([inst(i, study="1.2" if i % 2 else "1.9") for i in range(5)], "disagree on the study"),
        (
            [inst(i, orientation="1\\0\\0\\0\\1\\0" if i % 2 else "0\\1\\0\\0\\0\\-1") for i in range(5)],
            "mixed orientation",
        ),
        ([inst(i, thickness=12.0) for i in range(5)], "slice thickness 12 mm"),
    ],
)
def test_unusable_series_are_skipped_with_the_reason(env, infos, words):
    db, queue, asm, enqueued = env
    feed(asm, infos)
    asm.complete_due(at=T0 + 20)
    row = series_row(db)
    assert row["state"] == SeriesState.SKIPPED and words in row["reason"], row["reason"]
    assert enqueued == []


def test_localizers_are_left_out_of_a_usable_series():
    rows = [dict(inst(i).__dict__, path=f"p{i}") for i in range(5)]
    rows.append(dict(inst(9, image_type="ORIGINAL\\PRIMARY\\LOCALIZER").__dict__, path="scout"))
    sel = select_instances(rows, SelectionSection(min_slices=5))
    assert sel.accepted and "scout" not in sel.paths and len(sel.paths) == 5


def test_body_part_rule_is_data():
    rows = [dict(inst(i, body_part="HEAD").__dict__, path=f"p{i}") for i in range(5)]
    assert not select_instances(rows, SelectionSection(min_slices=1, body_parts=("CHEST",))).accepted
    assert select_instances(rows, SelectionSection(min_slices=1)).accepted


def test_rejection_after_the_fact_is_recorded(env):
    db, queue, asm, enqueued = env
    feed(asm, [inst(i) for i in range(4)])
    asm.complete_due(at=T0 + 20)
    asm.mark_skipped("1.2.3", "slices are not equally spaced")
    row = series_row(db)
    assert row["state"] == SeriesState.SKIPPED and row["reason"] == "slices are not equally spaced"


def test_quiet_timer_survives_a_restart(tmp_path):
    db = Database(tmp_path / "n.sqlite3")
    asm = SeriesAssembler(db, JobQueue(db), SelectionSection(min_slices=2), quiet_seconds=10)
    feed(asm, [inst(i) for i in range(3)])
    db.close()
    db2 = Database(tmp_path / "n.sqlite3")
    asm2 = SeriesAssembler(db2, JobQueue(db2), SelectionSection(min_slices=2), quiet_seconds=10)
    assert asm2.complete_due(at=T0 + 30) == ["1.2.3"]
    db2.close()


def _header(sender: str = "", **elements):
    """A stored instance's header as the node reads it back (pydicom, file meta included)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    if sender:
        ds.file_meta.SourceApplicationEntityTitle = sender
    return ds


def test_urgent_rules_name_the_rule_that_matched():
    from dicomnode.config import UrgentRules
    from dicomnode.series import urgent_reason

    rules = UrgentRules(
        calling_ae_titles=("ER_CT",), body_parts=("CHEST",), tags={"RequestedProcedurePriority": ["STAT"]}
    )
    assert urgent_reason(rules, _header("ER_CT", BodyPartExamined="ABDOMEN")) == "sent by ER_CT"
    assert urgent_reason(rules, _header("CT1", BodyPartExamined="CHEST")) == "BodyPartExamined CHEST"
    assert urgent_reason(rules, _header("CT1", RequestedProcedurePriority="stat ")) == "RequestedProcedurePriority STAT"
    assert urgent_reason(rules, _header("CT1", RequestedProcedurePriority="ROUTINE")) is None
    assert urgent_reason(UrgentRules(), _header("ER_CT")) is None  # no rules: routine


def test_urgent_series_are_claimed_before_older_routine_ones(tmp_path):
    db = Database(tmp_path / "node.sqlite3")
    queue = JobQueue(db)
    headers = {"1.2.3": _header("CT_ROUTINE"), "1.2.4": _header("ER_CT"), "1.2.5": _header("ER_CT")}
    read = []

    def read_header(rel_path: str):
        read.append(rel_path)
        if "1.2.5" in rel_path:
            raise OSError("unreadable")  # a damaged file: routine, logged, not lost
        return headers[rel_path.split("/")[1]]

    rules = SelectionSection(min_slices=4, urgent={"calling_ae_titles": ["ER_CT"]})
    asm = SeriesAssembler(db, queue, rules, quiet_seconds=10, read_header=read_header)
    feed(asm, [inst(i, series="1.2.3") for i in range(4)], t=T0)
    feed(asm, [inst(i, series="1.2.4") for i in range(4)], t=T0 + 1)
    feed(asm, [inst(i, series="1.2.5") for i in range(4)], t=T0 + 2)
    assert asm.complete_due(at=T0 + 100) == ["1.2.3", "1.2.4", "1.2.5"]
    assert len(read) == 3  # one header per series, not per instance
    first, second, third = queue.claim(at=T0 + 101), queue.claim(at=T0 + 102), queue.claim(at=T0 + 103)
    assert (first.series_uid, first.urgent) == ("1.2.4", "sent by ER_CT")
    assert (second.series_uid, second.urgent) == ("1.2.3", None)
    assert (third.series_uid, third.urgent) == ("1.2.5", None)
    db.close()


def test_a_schema_3_database_gains_the_urgent_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    Database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE jobs DROP COLUMN urgent")  # what a schema-3 node left behind
    conn.execute(
        "INSERT INTO jobs(series_uid, study_uid, generation, instances, state, created, updated) "
        "VALUES ('1.2.9', '1.2', 1, '[]', 'queued', 0, 0)"
    )
    conn.commit()
    conn.close()
    db = Database(path)
    job = JobQueue(db).claim(at=1.0)
    assert job.series_uid == "1.2.9" and job.urgent is None
    db.close()


def _rows(zs, orientation="1\\0\\0\\0\\1\\0"):
    return [{"orientation": orientation, "position": "" if z is None else f"-100\\-120\\{z:g}"} for z in zs]


def test_whole_slices_are_evenly_spaced_without_gaps():
    from dicomnode.series import slices_are_whole

    assert slices_are_whole(_rows([0, 2.5, 5, 7.5, 10])) is None
    assert slices_are_whole(_rows([10, 0, 5, 7.5, 2.5])) is None  # order of arrival does not matter
    assert "uneven" in slices_are_whole(_rows([0, 2.5, 7.5, 10]))  # a missing slice
    assert "share a position" in slices_are_whole(_rows([0, 0, 0]))
    assert "no position" in slices_are_whole(_rows([0, None, 5]))
    assert "orientation" in slices_are_whole(_rows([0, 1]) + _rows([2], "0\\1\\0\\0\\0\\-1"))
    # Sagittal slices: the spacing is measured along their own normal (x).
    sagittal = [{"orientation": "0\\1\\0\\0\\0\\-1", "position": f"{x:g}\\0\\0"} for x in (0, 1, 2, 3)]
    assert slices_are_whole(sagittal) is None


def test_the_last_sender_to_release_completes_a_series():
    from dicomnode.scp import SeriesSenders

    senders, a, b = SeriesSenders(), object(), object()
    senders.sent(a, "1.2.3")
    senders.sent(a, "1.2.3")
    senders.sent(b, "1.2.3")
    senders.sent(b, "1.2.4")
    assert senders.ended(a, released=True) == []  # b still sends 1.2.3
    assert sorted(senders.ended(b, released=True)) == ["1.2.3", "1.2.4"]
    senders.sent(a, "1.2.5")
    assert senders.ended(a, released=False) == []  # an abort: the quiet period decides


def test_complete_released_needs_whole_slices(env):
    db, queue, asm, enqueued = env
    whole = [replace_position(inst(i, series="1.2.3"), i * 2.0) for i in range(5)]
    gap = [replace_position(inst(i, series="1.2.4"), z) for i, z in enumerate((0, 2, 4, 8, 10))]
    feed(asm, whole)
    feed(asm, gap)
    assert asm.complete_released("1.2.3", at=T0 + 1) is not None  # no quiet period needed
    assert series_state(db, "1.2.3") == SeriesState.COMPLETE and len(enqueued) == 1
    assert asm.complete_released("1.2.4", at=T0 + 1) is None  # a gap: waits for the quiet period
    assert series_state(db, "1.2.4") == SeriesState.RECEIVING
    assert asm.complete_due(at=T0 + 20) == ["1.2.4"]


def replace_position(info, z: float):
    from dataclasses import replace

    return replace(info, position=f"-100\\-120\\{z:g}")
