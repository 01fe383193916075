"""Prior studies (dicomnode.priors) against Orthanc as the PACS: C-FIND finds the
patient's earlier CT studies in the look-back window, most recent first; C-MOVE sends
one to a DCMTK storescp standing in for the node's listener."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest

from dicomnode.config import PriorsSection
from dicomnode.errors import PriorsError
from dicomnode.priors import find_prior_studies, parse_da, retrieve_study, study_query
from dicomnode.synthetic import ct_datasets
from pipeline.types import CTVolume

from node_helpers import StoreSCP, free_port, wait_for
from orthanc import orthanc_missing_reason, running_orthanc

NODE_AE = "NODE"


def _volume(seed: int, n: int = 4) -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = rng.normal(-600, 50, (n, 16, 16)).astype(np.float32)
    return CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))


def _study(patient_id: str, date: str, seed: int, modality: str = "CT") -> list:
    datasets = ct_datasets(_volume(seed), patient_id=patient_id, accession_number=f"ACC{seed}")
    for ds in datasets:
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.Modality = modality
    return datasets


def _upload(pacs, datasets) -> None:
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        pacs.upload(buf.getvalue())


def test_study_query_asks_for_the_window_and_the_attributes():
    cfg = PriorsSection(enabled=True, lookback_days=30)
    q = study_query("P1", dt.date(2026, 3, 31), cfg)
    assert q.QueryRetrieveLevel == "STUDY" and q.PatientID == "P1"
    assert q.StudyDate == "20260301-20260331"
    assert "StudyInstanceUID" in q and "ModalitiesInStudy" in q
    assert parse_da("20260301") == dt.date(2026, 3, 1) and parse_da("") is None and parse_da("2026") is None


def test_a_pacs_that_is_down_is_a_clear_error():
    cfg = PriorsSection(enabled=True, host="127.0.0.1", port=free_port(), timeout_s=5)
    with pytest.raises(PriorsError, match="cannot be reached"):
        find_prior_studies(cfg, NODE_AE, "P1", "1.2.3", dt.date(2026, 3, 1))


@pytest.mark.peers
@pytest.mark.skipif(orthanc_missing_reason() is not None, reason=orthanc_missing_reason() or "")
def test_finds_the_earlier_ct_studies_and_moves_one(tmp_path):
    receiver = StoreSCP(tmp_path / "received", ae_title=NODE_AE).start()
    try:
        modalities = {NODE_AE: (NODE_AE, "127.0.0.1", receiver.port)}
        with running_orthanc(tmp_path / "pacs", aet="PACS", dicomweb=False, modalities=modalities) as pacs:
            current = _study("P1", "20260315", 1)
            older = _study("P1", "20260110", 2)
            oldest = _study("P1", "20250301", 3)  # beyond a 200-day look-back
            later = _study("P1", "20260320", 4)  # after the new study
            mr = _study("P1", "20260201", 5, modality="MR")
            other = _study("P2", "20260201", 6)
            for study in (current, older, oldest, later, mr, other):
                _upload(pacs, study)
            cfg = PriorsSection(enabled=True, ae_title="PACS", port=pacs.dicom_port, lookback_days=200, timeout_s=60)
            found = find_prior_studies(cfg, NODE_AE, "P1", str(current[0].StudyInstanceUID), dt.date(2026, 3, 15))
            assert [p.study_uid for p in found] == [str(older[0].StudyInstanceUID)]
            assert found[0].study_date == dt.date(2026, 1, 10) and "CT" in found[0].modalities
            assert found[0].accession_number == "ACC2"

            wide = cfg.model_copy(update={"lookback_days": 800, "max_studies": 5})
            found = find_prior_studies(wide, NODE_AE, "P1", str(current[0].StudyInstanceUID), dt.date(2026, 3, 15))
            assert [p.study_uid for p in found] == [str(s[0].StudyInstanceUID) for s in (older, oldest)]
            assert find_prior_studies(wide, NODE_AE, "NOBODY", "1.2.3", dt.date(2026, 3, 15)) == []

            outcome = retrieve_study(cfg, NODE_AE, NODE_AE, str(older[0].StudyInstanceUID))
            assert outcome.ok and outcome.completed == len(older)
            wait_for(lambda: len(receiver.received_sop_uids()) >= len(older), 30, what="the moved instances")
            assert sorted(receiver.received_sop_uids()) == sorted(str(ds.SOPInstanceUID) for ds in older)

            with pytest.raises(PriorsError, match="C-MOVE"):
                retrieve_study(cfg, NODE_AE, "UNKNOWNAE", str(older[0].StudyInstanceUID))
    finally:
        receiver.stop()
