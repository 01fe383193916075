"""Key Object Selection: valid, titled 'Of Interest', listing the infectious slices."""

from __future__ import annotations

import highdicom as hd
import pytest

from dicomnode.writers import WriterOptions, build_result_objects, codes

from writer_inputs import dciodvfy, make_inputs, to_bytes_and_back


def _kos(inputs):
    objects = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(enabled={"kos"}))
    assert len(objects["kos"]) == 1
    return to_bytes_and_back(objects["kos"][0])


def _referenced(kos) -> list[str]:
    return [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in kos.ContentSequence
        if item.ValueType == "IMAGE"
    ]


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(seed=8, n_slices=24, size=96)


@pytest.mark.peers
def test_kos_passes_dciodvfy(inputs, tmp_path):
    result = dciodvfy(_kos(inputs), tmp_path, "kos.dcm")
    assert result.errors == [], result.output
    assert result.unexpected_warnings == [], result.output


def test_kos_lists_the_infectious_slices(inputs):
    kos = _kos(inputs)
    infected = inputs.result.infected.z_indices
    assert infected
    assert _referenced(kos) == [str(inputs.sources[z].SOPInstanceUID) for z in sorted(infected)]
    assert kos.ConceptNameCodeSequence[0].CodeValue == codes.OF_INTEREST.value
    assert kos.StudyInstanceUID == inputs.sources[0].StudyInstanceUID and kos.Modality == "KO"
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence >= set(_referenced(kos))
    hd.ko.KeyObjectSelectionDocument.from_dataset(kos)  # highdicom accepts it
    texts = [
        item.TextValue
        for item in kos.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert len(texts) == 1 and "COVID-19 infectious slices" in texts[0]
    assert inputs.result.model.disclaimer in texts[0]


def test_kos_falls_back_to_explained_then_top_slice():
    explained = make_inputs(seed=9, n_slices=20, size=96, label="cap", infected=False)
    assert _referenced(_kos(explained)) == [
        str(explained.sources[z].SOPInstanceUID) for z in sorted(a.z_index for a in explained.result.attention)
    ]
    bare = make_inputs(seed=9, n_slices=20, size=96, label="cap", infected=False, with_attention=False)
    referenced = _referenced(_kos(bare))
    assert len(referenced) == 1
    scores = bare.result.slice_scores
    col = list(bare.result.case_scores.probabilities).index("cap")
    top_z = int(scores.z_indices[scores.probabilities[:, col].argmax()])
    assert referenced == [str(bare.sources[top_z].SOPInstanceUID)]
