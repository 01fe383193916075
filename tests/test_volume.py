"""dicomnode.volume.load_series on synthetic CT series: order, HU, geometry, rejections."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from dicomnode.errors import NodeError
from dicomnode.synthetic import ct_datasets, write_ct_series
from dicomnode.volume import SeriesRejected, load_series
from pipeline.types import CTVolume

NZ, NY, NX = 12, 40, 48  # JPEG 2000 needs at least ~32 px per side


def _volume(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> CTVolume:
    rng = np.random.default_rng(7)
    hu = rng.integers(-1024, 1500, size=(NZ, NY, NX)).astype(np.float32)
    return CTVolume(hu=hu, spacing_mm=(2.5, 0.75, 0.8), origin_mm=(-12.0, -9.0, -100.0), direction=direction)


def _save(datasets: list[Dataset], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        p = out / f"IM{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def test_shuffled_files_come_back_in_slice_order(tmp_path: Path) -> None:
    vol = _volume()
    series = write_ct_series(vol, tmp_path)
    paths = list(series.paths)
    random.Random(3).shuffle(paths)
    loaded, sources = load_series(paths)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    assert loaded.hu.dtype == np.float32
    assert loaded.slice_uids == series.sop_uids
    assert [str(ds.SOPInstanceUID) for ds in sources] == list(series.sop_uids)
    assert loaded.slice_numbers == tuple(range(1, NZ + 1))
    np.testing.assert_allclose(loaded.spacing_mm, vol.spacing_mm, atol=1e-3)
    np.testing.assert_allclose(loaded.origin_mm, vol.origin_mm, atol=1e-3)
    np.testing.assert_allclose(loaded.direction, vol.direction, atol=1e-6)


def test_rotated_orientation_keeps_geometry(tmp_path: Path) -> None:
    # Rows run along -y, columns along +x; the normal is still +z.
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    vol = _volume(direction)
    series = write_ct_series(vol, tmp_path)
    loaded, _ = load_series(list(series.paths)[::-1])
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    np.testing.assert_allclose(loaded.direction, direction, atol=1e-6)
    np.testing.assert_allclose(loaded.origin_mm, vol.origin_mm, atol=1e-3)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntaxes_decode_to_the_same_hu(tmp_path: Path, syntax: str) -> None:
    vol = _volume()
    series = write_ct_series(vol, tmp_path, transfer_syntax=syntax)
    loaded, sources = load_series(series.paths)
    assert str(sources[0].file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(loaded.hu, vol.hu)


def test_rescale_slope_and_intercept_per_slice(tmp_path: Path) -> None:
    vol = _volume()
    datasets = ct_datasets(vol)
    stored = datasets[4].pixel_array.astype(np.float64)
    datasets[4].RescaleSlope = "2"
    datasets[4].RescaleIntercept = "-2048"
    loaded, _ = load_series(_save(datasets, tmp_path))
    np.testing.assert_allclose(loaded.hu[4], stored * 2 - 2048)
    np.testing.assert_array_equal(loaded.hu[3], vol.hu[3])


def test_rejection_is_a_node_error(tmp_path: Path) -> None:
    assert issubclass(SeriesRejected, NodeError)
    with pytest.raises(SeriesRejected) as err:
        load_series([])
    assert err.value.code == "too_few_slices"


def _set(keyword: str, value) -> Callable[[list[Dataset]], list[Dataset]]:
    def change(dss: list[Dataset]) -> list[Dataset]:
        setattr(dss[5], keyword, value)
        return dss

    return change


def _drop_pixels(dss: list[Dataset]) -> list[Dataset]:
    del dss[5].PixelData
    return dss


def _drop_middle(dss: list[Dataset]) -> list[Dataset]:
    return dss[:6] + dss[7:]


def _duplicate_position(dss: list[Dataset]) -> list[Dataset]:
    dss[5].ImagePositionPatient = list(dss[4].ImagePositionPatient)
    return dss


def _other_size(dss: list[Dataset]) -> list[Dataset]:
    small = ct_datasets(
        CTVolume(hu=np.zeros((1, 16, 16), np.float32), spacing_mm=(2.5, 0.75, 0.8)),
        study_uid=str(dss[0].StudyInstanceUID),
        series_uid=str(dss[0].SeriesInstanceUID),
        patient_id=str(dss[0].PatientID),
    )[0]
    small.ImagePositionPatient = list(dss[5].ImagePositionPatient)
    small.ImageOrientationPatient = list(dss[5].ImageOrientationPatient)
    dss[5] = small
    return dss


@pytest.mark.parametrize(
    "change,code,words",
    [
        (_set("ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "mixed_orientation", "orientations"),
        (_other_size, "inconsistent_size", "different sizes"),
        (_drop_pixels, "no_pixel_data", "no pixel data"),
        (_drop_middle, "non_uniform_spacing", "missing slice"),
        (_duplicate_position, "duplicate_position", "share the position"),
        (_set("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer", "localizer"),
        (_set("PatientID", "SOMEONE-ELSE"), "mixed_patient", "PatientID"),
        (_set("StudyInstanceUID", generate_uid()), "mixed_study", "StudyInstanceUID"),
    ],
)
def test_each_rejection_reason(tmp_path: Path, change, code: str, words: str) -> None:
    datasets = change(ct_datasets(_volume(), patient_id="PID-123"))
    with pytest.raises(SeriesRejected, match=words) as err:
        load_series(_save(datasets, tmp_path))
    assert err.value.code == code
    assert "PID-123" not in str(err.value) and "SOMEONE-ELSE" not in str(err.value)


def _all(keyword: str, value) -> Callable[[list[Dataset]], list[Dataset]]:
    def change(dss: list[Dataset]) -> list[Dataset]:
        for ds in dss:
            setattr(ds, keyword, value)
        return dss

    return change


def _truncate(dss: list[Dataset]) -> list[Dataset]:
    dss[5].PixelData = dss[5].PixelData[: len(dss[5].PixelData) // 2]
    return dss


@pytest.mark.parametrize(
    "change,code,words",
    [
        # Issue 9, defect 11: checked before a pixel is allocated (65535^2 x 12 slices = 200 GB).
        (_all("Rows", 65535), "implausible_geometry", "65535 x 48"),
        (_all("Columns", 65535), "implausible_geometry", "40 x 65535"),
        (_set("RescaleSlope", 1e30), "implausible_rescale", r"RescaleSlope 1e\+30"),
        (_set("RescaleIntercept", float("nan")), "implausible_rescale", "RescaleIntercept nan"),
        # Defect 16: a truncated uncompressed slice is called truncated, not "install a codec".
        (_truncate, "truncated_pixels", "truncated or damaged"),
    ],
)
def test_hostile_headers_are_refused_with_a_reason(tmp_path: Path, change, code: str, words: str) -> None:
    import tracemalloc

    datasets = change(ct_datasets(_volume(), patient_id="PID-123"))
    paths = _save(datasets, tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(SeriesRejected, match=words) as err:
            load_series(paths)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == code
    assert "install" not in str(err.value)
    assert peak < 200 * 2**20


def test_too_few_slices(tmp_path: Path) -> None:
    paths = _save(ct_datasets(_volume())[:4], tmp_path)
    with pytest.raises(SeriesRejected, match="fewer than 10") as err:
        load_series(paths)
    assert err.value.code == "too_few_slices"
    volume, _ = load_series(paths, min_slices=3)
    assert volume.shape == (4, NY, NX)


def test_unreadable_file(tmp_path: Path) -> None:
    paths = _save(ct_datasets(_volume()), tmp_path)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    with pytest.raises(SeriesRejected, match="notes.txt") as err:
        load_series(paths + [junk])
    assert err.value.code == "unreadable"


def test_instance_number_order_without_geometry(tmp_path: Path) -> None:
    vol = _volume()
    datasets = ct_datasets(vol)
    for ds in datasets:
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    paths = _save(datasets[::-1], tmp_path)
    loaded, _ = load_series(paths)
    np.testing.assert_array_equal(loaded.hu, vol.hu)
    assert loaded.spacing_mm[0] == pytest.approx(2.5)


def test_jpeg_baseline_series_decodes_to_hu_within_its_loss(tmp_path: Path) -> None:
    """Issue 9, defect 15: 8-bit JPEG baseline, as many scanners and PACS send, is decoded
    (pylibjpeg/Pillow); stored = (HU + 1024) / 8 with slope 8, intercept -1024."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    vol = _volume()
    # A smooth ramp (JPEG keeps it within a few grey levels), -1000 to 1000 HU across the slice.
    smooth = np.broadcast_to(np.round(np.linspace(-1000, 1000, NX)), (NZ, NY, NX)).astype(np.float32)
    datasets = ct_datasets(CTVolume(hu=smooth, spacing_mm=vol.spacing_mm, origin_mm=vol.origin_mm))
    for z, ds in enumerate(datasets):
        stored = np.clip(np.round((smooth[z] + 1024) / 8), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(stored, mode="L").save(buf, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 8, -1024
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    loaded, sources = load_series(_save(datasets, tmp_path))
    assert str(sources[0].file_meta.TransferSyntaxUID) == JPEGBaseline8Bit
    assert np.abs(loaded.hu - smooth).max() <= 8 * 3  # quantisation and JPEG loss, a few grey levels


@pytest.mark.parametrize("reverse", [False, True])
def test_the_node_and_the_data_set_readers_agree_on_one_series(tmp_path, reverse):
    """dicomnode.volume.load_series (pydicom) and pipeline.datasets.images (SimpleITK) read
    the same files into the same volume: HU, z order, spacing, origin, direction, UIDs."""
    from pipeline.datasets.images import read_volume
    from pipeline.phantom import make_phantom

    phantom = make_phantom("covid19", 7, 20, 64)
    series = write_ct_series(phantom.volume, tmp_path / "series")
    paths = list(series.paths)[::-1] if reverse else list(series.paths)
    node, _ = load_series(paths)
    sets = read_volume(tmp_path / "series")
    assert node.shape == sets.shape
    np.testing.assert_allclose(node.hu, sets.hu, atol=0.5)
    np.testing.assert_allclose(node.spacing_mm, sets.spacing_mm, atol=1e-3)
    np.testing.assert_allclose(node.origin_mm, sets.origin_mm, atol=1e-3)
    np.testing.assert_allclose(node.direction, sets.direction, atol=1e-6)
    assert node.slice_uids == sets.slice_uids
