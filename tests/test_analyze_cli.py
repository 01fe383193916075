"""``dicomnode analyze`` on a small DICOM folder and a NIfTI file with the tiny bundle."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.commands import analyze as analyze_cmd
from dicomnode.synthetic import write_ct_series
from pipeline.metrics import dice
from pipeline.params import ChainParams
from pipeline.phantom import make_phantom
from pipeline.preprocess import lung_slice_indices
from pipeline.types import CLASS_NAMES, DECISIONS, TASK_NAMES

FIRST_INSTANCE = 101  # InstanceNumbers start here, so they cannot be mistaken for z indices
SUMMARY_KEYS = {
    "decision",
    "decision_reason",
    "thresholds",
    "out_of_domain_score",
    "label",
    "probabilities",
    "tasks",
    "infected_slices",
    "lung_volume_ml",
}


def run_analyze(argv: list[str], capsys) -> tuple[int, str, str]:
    """The sub-command as the CLI runs it: its own arguments, then run()."""
    parser = argparse.ArgumentParser(prog="dicomnode analyze")
    analyze_cmd.add_arguments(parser)
    code = analyze_cmd.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def phantom():
    # 26 slices: the lung slices (2..22) are not symmetric along z, so a mirrored slice
    # numbering would show.
    ph = make_phantom("covid19", 31, n_slices=26, size_px=96)
    nz = ph.volume.shape[0]
    volume = replace(
        ph.volume, origin_mm=(-150.0, -160.0, -300.0), slice_numbers=tuple(range(FIRST_INSTANCE, FIRST_INSTANCE + nz))
    )
    return ph, volume


def _check_summary(summary: dict) -> None:
    assert SUMMARY_KEYS <= set(summary)
    assert summary["decision"] in DECISIONS  # what the objects state; "label" is the argmax only
    assert summary["label"] in CLASS_NAMES
    assert list(summary["probabilities"]) == list(CLASS_NAMES)
    assert sum(summary["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert list(summary["tasks"]) == list(TASK_NAMES)
    assert summary["lung_volume_ml"] > 0


def _check_mask_alignment(mask_path: Path, reference: sitk.Image, truth: np.ndarray) -> None:
    mask = sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == reference.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert dice(sitk.GetArrayFromImage(mask) > 0, truth) >= 0.95


def test_dicom_folder(tmp_path: Path, tiny_bundle: Path, phantom, capsys) -> None:
    ph, volume = phantom
    series = write_ct_series(volume, tmp_path / "series")
    out = tmp_path / "out"
    code, stdout, _ = run_analyze(
        [
            str(tmp_path / "series"),
            "--out",
            str(out),
            "--bundle",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--save-mask",
            str(tmp_path / "lung.nii.gz"),
            "--top-k",
            "2",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    _check_summary(summary)
    details = json.loads((out / "result.json").read_text())
    numbers = set(range(FIRST_INSTANCE, FIRST_INSTANCE + volume.shape[0]))
    located = {row["slice"] for row in details["locator_scores"]}
    assert located and located <= numbers  # slices are named by InstanceNumber
    assert set(summary["infected_slices"]) <= located
    assert set(details["explained_slices"]) <= numbers
    # The result objects, as the node would send them (out of domain: no KOS, no SC).
    for kind in ("sr", "seg", "kos"):
        files = sorted((out / kind).glob("*.dcm"))
        if kind == "kos" and summary["decision"] == "out_of_domain":
            assert files == []
            continue
        assert len(files) == 1, kind
        ds = pydicom.dcmread(files[0])
        assert ds.StudyInstanceUID == series.study_uid
    # The mask on the series' own grid: SimpleITK's reading of the folder is the reference.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    _check_mask_alignment(tmp_path / "lung.nii.gz", reader.Execute(), ph.lung_mask)


@pytest.mark.parametrize(
    "direction",
    [
        (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),  # stored RAS, as many NIfTI files are
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # slices stored top to bottom
    ],
    ids=["ras", "z-reversed"],
)
def test_nifti_file(tmp_path: Path, tiny_bundle: Path, phantom, capsys, direction) -> None:
    ph, volume = phantom
    image = sitk.GetImageFromArray(volume.hu)
    image.SetSpacing(tuple(float(s) for s in volume.spacing_mm[::-1]))
    image.SetOrigin((12.0, -40.0, 80.0))
    image.SetDirection(direction)
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(nifti))
    out = tmp_path / "out"
    code, stdout, _ = run_analyze(
        [
            str(nifti),
            "--out",
            str(out),
            "--bundle",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--save-mask",
            str(tmp_path / "lung.nii.gz"),
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    _check_summary(summary)
    details = json.loads((out / "result.json").read_text())
    located = {row["slice"] for row in details["locator_scores"]}
    assert located <= set(range(volume.shape[0]))  # NIfTI: slices are z indices
    assert set(summary["infected_slices"]) <= located
    pngs = sorted((out / "overlays").glob("*.png"))
    if summary["decision"] == "out_of_domain":
        assert pngs == []  # as the SC: nothing the model stands behind to explain
    else:
        assert len(pngs) == len(details["explained_slices"]) >= 1
    _check_mask_alignment(tmp_path / "lung.nii.gz", sitk.ReadImage(str(nifti)), ph.lung_mask)
    # Slices are named by the file's own slice index: the located slices are the lung
    # slices of the saved mask, which lies on the file's grid.
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "lung.nii.gz"))) > 0
    assert located == set(int(z) for z in lung_slice_indices(saved, ChainParams()))


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, tiny_bundle: Path, capsys) -> None:
    code, stdout, err = run_analyze([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "neither a DICOM series folder nor a NIfTI" in err

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"not a DICOM file")
    code, _, err = run_analyze([str(junk), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a readable DICOM file" in err


def test_missing_bundle_is_a_clear_error(tmp_path: Path, phantom, capsys) -> None:
    _, volume = phantom
    write_ct_series(volume, tmp_path / "series")
    code, _, err = run_analyze(
        [str(tmp_path / "series"), "--out", str(tmp_path / "o"), "--bundle", str(tmp_path / "no-bundle")], capsys
    )
    assert code == 2
    assert "model_card.json" in err and len(err.strip().splitlines()) == 1


def test_result_objects_that_cannot_be_built_exit_2(
    tmp_path: Path, tiny_bundle: Path, phantom, capsys, monkeypatch
) -> None:
    # Issue 14, item 1: a WriterError once escaped as a traceback. The writers' refusal is
    # simulated (a unit test of the command's error mapping); the rest is the real chain.
    import dicomnode.writers as writers

    def refuse(*_args, **_kwargs):
        raise writers.WriterError("source slice 3 has no ImagePositionPatient; resend the series")

    monkeypatch.setattr(writers, "build_result_objects", refuse)
    _, volume = phantom
    write_ct_series(volume, tmp_path / "series")
    code, stdout, err = run_analyze(
        [str(tmp_path / "series"), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle), "--device", "cpu"],
        capsys,
    )
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "cannot be built" in err and "ImagePositionPatient" in err


def test_priors_give_the_trend_and_the_fused_decision(tmp_path: Path, tiny_bundle: Path, phantom, capsys) -> None:
    """``--prior``: an earlier DICOM study and a NIfTI scan of the same patient."""
    _, volume = phantom
    later = write_ct_series(volume, tmp_path / "later")
    earlier = write_ct_series(volume, tmp_path / "earlier")
    for path in earlier.paths:  # the same scan, dated earlier, as another study
        ds = pydicom.dcmread(path)
        ds.StudyDate = "20251120"
        ds.save_as(path, enforce_file_format=True)
    nifti = tmp_path / "undated.nii.gz"
    sitk.WriteImage(sitk.ReadImage([str(p) for p in earlier.paths]), str(nifti))
    out = tmp_path / "out"
    argv = [str(tmp_path / "later"), "--out", str(out), "--bundle", str(tiny_bundle), "--device", "cpu"]
    code, stdout, err = run_analyze(
        [*argv, "--prior", str(tmp_path / "earlier"), "--prior", str(nifti), "--multi-stage-rule", "max"], capsys
    )
    assert code == 0, err
    multi = json.loads(stdout)["multi_stage"]
    assert multi["rule"] == "max"
    assert [s["study_date"] for s in multi["stages"]] == [None, "2025-11-20", "2026-01-01"]  # undated first
    assert [s["study_uid"] for s in multi["stages"]] == [nifti.name, earlier.study_uid, later.study_uid]
    assert multi["stages"][2]["current"] and multi["decision"] in DECISIONS
    sr = pydicom.dcmread(next((out / "sr").glob("*.dcm")))
    from dicomnode.writers import read_findings

    assert "Multi-stage: AI decision over 3 study dates" in read_findings(sr).summary
    (other,) = sr.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == earlier.study_uid
    code, _, err = run_analyze([*argv, "--prior", str(tmp_path / "missing")], capsys)
    assert code == 2 and "prior" in err
