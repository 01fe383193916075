"""Grad-CAM overlays as Secondary Capture: valid, RGB, referencing their slices."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.writers import WriterOptions, build_result_objects
from dicomnode.writers.render import LUNG_OUTLINE_RGB, outline, render_overlay, window_to_gray
from dicomnode.writers.sc import patient_orientation

from writer_inputs import dciodvfy, make_inputs, to_bytes_and_back


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(seed=5, n_slices=24, size=96)


@pytest.fixture(scope="module")
def overlays(inputs):
    objects = build_result_objects(
        inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sc"}, max_overlays=5)
    )
    return [to_bytes_and_back(ds) for ds in objects["sc"]]


@pytest.mark.peers
def test_sc_passes_dciodvfy(overlays, tmp_path):
    assert overlays
    result = dciodvfy(overlays[0], tmp_path, "sc.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_one_overlay_per_explained_infectious_slice_in_one_series(overlays, inputs):
    res = inputs.result
    expected_z = sorted(a.z_index for a in res.attention if a.z_index in res.infected.z_indices)
    assert expected_z, "the test inputs must explain infectious slices"
    assert len(overlays) == len(expected_z)
    assert len({ds.SeriesInstanceUID for ds in overlays}) == 1
    assert {ds.StudyInstanceUID for ds in overlays} == {inputs.sources[0].StudyInstanceUID}
    assert overlays[0].SeriesInstanceUID != inputs.sources[0].SeriesInstanceUID
    assert [int(ds.InstanceNumber) for ds in overlays] == list(range(1, len(overlays) + 1))
    for ds, z in zip(overlays, expected_z, strict=True):
        source = inputs.sources[z]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in source.ImagePositionPatient]
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName


def test_overlay_pixels_are_rgb_and_flagged_burned_in(overlays, inputs):
    for ds in overlays:
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        assert ds.BitsAllocated == 8 and ds.BurnedInAnnotation == "YES"
        assert ds.pixel_array.shape == (*inputs.volume.shape[1:], 3)
        assert "not for clinical use" in ds.SeriesDescription
        assert inputs.result.model.disclaimer in ds.ImageComments
        assert patient_orientation(ds) == tuple(ds.PatientOrientation)


def test_max_overlays_caps_the_series(inputs):
    for cap in (0, 1):
        objects = build_result_objects(
            inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sc"}, max_overlays=cap)
        )
        assert len(objects["sc"]) == cap


def test_without_infectious_slices_the_explained_slices_get_overlays():
    inputs = make_inputs(seed=6, n_slices=20, size=96, label="influenza", infected=False)
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"sc"}))
    explained = sorted(a.z_index for a in inputs.result.attention)
    assert [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in objects["sc"]] == [
        inputs.sources[z].SOPInstanceUID for z in explained
    ]


def test_render_blends_heat_and_outlines_lung():
    hu = np.full((64, 64), -850.0, np.float32)
    lung = np.zeros((64, 64), bool)
    lung[10:50, 10:50] = True
    heat = np.zeros((64, 64), np.float32)
    heat[30:40, 30:40] = 1.0
    rgb = render_overlay(hu, heat, lung)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    gray = window_to_gray(hu)[0, 0]
    assert tuple(rgb[5, 5]) == (gray, gray, gray)  # no heat, no outline: plain lung window
    r, g, b = (int(v) for v in rgb[35, 35])
    assert not (r == g == b), "heat must be coloured"
    assert tuple(rgb[10, 20]) == LUNG_OUTLINE_RGB and outline(lung)[10, 20]
    assert window_to_gray(np.array([-1350.0, 150.0, -600.0])).tolist() == [0, 255, 128]
