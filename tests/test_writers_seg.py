"""Lung SEG: valid, one segment 'Lung', frames referencing their source slices."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from dicomnode.writers import WriterOptions, build_result_objects, codes

from writer_inputs import dciodvfy, make_inputs, to_bytes_and_back


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(seed=7, n_slices=24, size=96)


@pytest.fixture(scope="module")
def seg(inputs):
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"seg"}))
    assert len(objects["seg"]) == 1
    return to_bytes_and_back(objects["seg"][0])


@pytest.mark.peers
def test_seg_passes_dciodvfy(seg, tmp_path):
    result = dciodvfy(seg, tmp_path, "seg.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_seg_frames_reference_the_lung_slices(seg, inputs):
    mask = inputs.result.lung_mask.mask
    lung_z = [z for z in range(mask.shape[0]) if mask[z].any()]
    assert 0 < len(lung_z) < mask.shape[0], "the test volume must have slices without lung"
    assert int(seg.NumberOfFrames) == len(lung_z)  # empty frames left out
    referenced = [
        str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]
    # highdicom orders frames along the slice normal; each lung slice exactly once.
    assert sorted(referenced) == sorted(str(inputs.sources[z].SOPInstanceUID) for z in lung_z)
    assert seg.StudyInstanceUID == inputs.sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == inputs.sources[0].FrameOfReferenceUID


def test_seg_reads_back_to_the_mask(seg, inputs):
    mask = inputs.result.lung_mask.mask
    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(s.SOPInstanceUID) for s in inputs.sources]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    assert np.array_equal(pixels[..., 0].astype(bool), mask)


def test_seg_segment_is_coded_lung_automatic(seg, inputs):
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Lung" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.LUNG.value
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentAlgorithmName.startswith(inputs.result.model.name)
    assert seg.SegmentationType == "BINARY"
    assert len(segment.RecommendedDisplayCIELabValue) == 3  # viewers need not pick a colour
    assert "not for clinical use" in seg.SeriesDescription


def test_empty_lung_mask_gives_no_seg(inputs):
    from dataclasses import replace

    from pipeline.types import LungMask

    empty = replace(
        inputs.result, lung_mask=LungMask(mask=np.zeros_like(inputs.result.lung_mask.mask), method="classical")
    )
    objects = build_result_objects(empty, inputs.volume, inputs.sources, WriterOptions(enabled={"seg"}))
    assert objects == {"seg": []}


@pytest.fixture(scope="module")
def seg_with_lesions(inputs):
    """The same result with a lesion map (a 3-class U-Net's): a block of the lung."""
    from dataclasses import replace

    from pipeline.types import LungMask

    mask = inputs.result.lung_mask.mask
    lesion = np.zeros_like(mask)
    z = [z for z in range(mask.shape[0]) if mask[z].any()][len(mask) // 4]
    lesion[z : z + 3] = mask[z : z + 3] & (np.arange(mask.shape[2]) < mask.shape[2] // 2)[None, None, :]
    assert lesion.any()
    result = replace(inputs.result, lung_mask=LungMask(mask=mask, method="unet", lesion=lesion))
    objects = build_result_objects(result, inputs.volume, inputs.sources, WriterOptions(enabled={"seg"}))
    return to_bytes_and_back(objects["seg"][0]), lesion


@pytest.mark.peers
def test_seg_with_a_lesion_segment_passes_dciodvfy(seg_with_lesions, tmp_path):
    result = dciodvfy(seg_with_lesions[0], tmp_path, "seg_lesion.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_lesion_map_is_a_second_overlapping_segment(seg_with_lesions, inputs):
    seg, lesion = seg_with_lesions
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lung", "Lesions of infection"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.LESION.value
    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(s.SOPInstanceUID) for s in inputs.sources]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    assert np.array_equal(pixels[..., 0].astype(bool), inputs.result.lung_mask.mask)
    assert np.array_equal(pixels[..., 1].astype(bool), lesion)
