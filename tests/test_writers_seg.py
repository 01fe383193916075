"""Lung SEG (lung, lesions) and lobe SEG: valid, coded segments, frames referencing their source slices."""

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
    """The same result with a lesion map (a 3-class U-Net's): a block of the lung; without a
    severity measurement (no density split), so the lesions are one segment."""
    from dataclasses import replace

    from pipeline.types import LungMask

    mask = inputs.result.lung_mask.mask
    lesion = np.zeros_like(mask)
    z = [z for z in range(mask.shape[0]) if mask[z].any()][len(mask) // 4]
    lesion[z : z + 3] = mask[z : z + 3] & (np.arange(mask.shape[2]) < mask.shape[2] // 2)[None, None, :]
    assert lesion.any()
    result = replace(inputs.result, lung_mask=LungMask(mask=mask, method="unet", lesion=lesion), severity=None)
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


@pytest.fixture(scope="module")
def lesion_inputs():
    """A result with a lesion map and its severity (ground glass and denser parts)."""
    from dataclasses import replace

    from pipeline.types import LungMask

    from writer_inputs import make_inputs

    inputs = make_inputs(seed=7, n_slices=24, size=96)
    assert inputs.result.severity is not None
    mask = inputs.result.lung_mask.mask
    lesion = inputs.lesion & mask
    assert lesion.any()
    lung = LungMask(mask=mask, method="unet", lesion=lesion, lobes=inputs.result.lung_mask.lobes)
    return inputs, replace(inputs.result, lung_mask=lung)


def test_lesions_are_split_into_ground_glass_and_consolidation(lesion_inputs):
    inputs, result = lesion_inputs
    hu = inputs.volume.hu.copy()
    lesion = result.lung_mask.lesion
    # Make part of the lesion dense: the SEG must put it in the consolidation segment.
    dense = lesion & (np.arange(hu.shape[2]) < hu.shape[2] // 2)[None, None, :]
    assert dense.any() and (lesion & ~dense).any()
    hu[dense] = 20.0
    from dataclasses import replace

    volume = replace(inputs.volume, hu=hu)
    objects = build_result_objects(result, volume, inputs.sources, WriterOptions(enabled={"seg"}))
    seg = to_bytes_and_back(objects["seg"][0])
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Lung", "Ground-glass opacity", "Consolidation"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == [codes.LUNG.value, codes.GROUND_GLASS_OPACITY.value, codes.LUNG_CONSOLIDATION.value]
    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(s.SOPInstanceUID) for s in inputs.sources]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3])
    consolidation = lesion & (hu >= result.severity.consolidation_hu)
    assert np.array_equal(pixels[..., 1].astype(bool), lesion & ~consolidation)
    assert np.array_equal(pixels[..., 2].astype(bool), consolidation)
    assert not (dense & ~consolidation).any()


@pytest.fixture(scope="module")
def lobe_seg(lesion_inputs):
    inputs, result = lesion_inputs
    objects = build_result_objects(result, inputs.volume, inputs.sources, WriterOptions(enabled={"lobe_seg"}))
    assert set(objects) == {"lobe_seg"} and len(objects["lobe_seg"]) == 1
    return to_bytes_and_back(objects["lobe_seg"][0])


def test_lobe_seg_has_five_coded_lobes_with_laterality(lobe_seg, lesion_inputs):
    inputs, result = lesion_inputs
    segments = lobe_seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == [
        "Right upper lobe",
        "Right middle lobe",
        "Right lower lobe",
        "Left upper lobe",
        "Left lower lobe",
    ]
    coded = []
    for s in segments:
        kind = s.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        coded.append((kind.CodeValue, modifier[0].CodeMeaning if modifier else None))
    assert coded == [
        ("45653009", "Right"),
        ("72481006", None),
        ("90572001", "Right"),
        ("45653009", "Left"),
        ("90572001", "Left"),
    ]
    assert int(lobe_seg.SeriesNumber) == WriterOptions().lobe_seg_series_number
    parsed = hd.seg.Segmentation.from_dataset(lobe_seg)
    uids = [str(s.SOPInstanceUID) for s in inputs.sources]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3, 4, 5])
    lobes = result.lung_mask.lobes
    for i in range(5):
        assert np.array_equal(pixels[..., i].astype(bool), lobes == i + 1)


def test_lobe_seg_without_a_lobe_numbers_the_others_in_order(lesion_inputs):
    """The lobe SEG is built from a label map: a lobe the map lacks (here the right middle)
    leaves no segment, and the others keep their pixels under renumbered segments."""
    from dataclasses import replace

    inputs, result = lesion_inputs
    lobes = result.lung_mask.lobes.copy()
    lobes[lobes == 2] = 3
    result = replace(result, lung_mask=replace(result.lung_mask, lobes=lobes))
    objects = build_result_objects(result, inputs.volume, inputs.sources, WriterOptions(enabled={"lobe_seg"}))
    seg = to_bytes_and_back(objects["lobe_seg"][0])
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Right upper lobe", "Right lower lobe", "Left upper lobe", "Left lower lobe"]
    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(s.SOPInstanceUID) for s in inputs.sources]
    pixels = parsed.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3, 4])
    for i, lobe in enumerate((1, 3, 4, 5)):
        assert np.array_equal(pixels[..., i].astype(bool), lobes == lobe)


@pytest.mark.peers
def test_lobe_seg_passes_dciodvfy(lobe_seg, tmp_path):
    result = dciodvfy(lobe_seg, tmp_path, "lobe_seg.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_no_lobe_seg_without_a_lobe_map_or_out_of_domain(inputs):
    from writer_inputs import DECISION_CASES, make_inputs

    plain = make_inputs(seed=7, n_slices=24, size=96, with_lobes=False)
    built = build_result_objects(plain.result, plain.volume, plain.sources, WriterOptions(enabled={"lobe_seg"}))
    assert built == {"lobe_seg": []}
    ood = DECISION_CASES["out_of_domain"]()
    assert ood.result.lung_mask.lobes is not None
    built = build_result_objects(ood.result, ood.volume, ood.sources, WriterOptions(enabled={"lobe_seg"}))
    assert built == {"lobe_seg": []}


def _frame_lateralities(seg) -> dict[int, set[str]]:
    """Segment number -> the Frame Laterality of its frames (shared or per frame)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    out: dict[int, set[str]] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ident = frame.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        anatomy = frame.get("FrameAnatomySequence") or shared.FrameAnatomySequence
        assert anatomy[0].AnatomicRegionSequence[0].CodeValue == codes.LUNG.value
        out.setdefault(int(ident[0].ReferencedSegmentNumber), set()).add(str(anatomy[0].FrameLaterality))
    return out


def test_frames_say_their_laterality(seg, lobe_seg):
    """Both lungs are B; each lobe's frames say its side (General Series' Laterality
    cannot say "both", and PixelMed wants Laterality unless a Frame Laterality is there)."""
    assert "Laterality" not in seg
    assert _frame_lateralities(seg) == {1: {"B"}}
    assert _frame_lateralities(lobe_seg) == {1: {"R"}, 2: {"R"}, 3: {"R"}, 4: {"L"}, 5: {"L"}}
