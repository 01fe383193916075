"""docs/conformance.md agrees with the code: its generated tables are what the code
says now, and its prose names the UIDs, statuses and SOP classes the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from dicomnode import conformance, fastscp, header
from dicomnode.writers import WriterOptions, build_result_objects

from writer_inputs import make_inputs

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def test_generated_tables_match_the_code():
    text = DOC.read_text()
    found = conformance.blocks(text)
    fresh = conformance.tables()
    assert set(found) == set(fresh), "docs/conformance.md lacks or has extra generated blocks"
    stale = [name for name in fresh if found[name].strip() != fresh[name].strip()]
    assert not stale, (
        f"docs/conformance.md is stale in {stale}: run python -m dicomnode.conformance docs/conformance.md"
    )


def test_a_changed_fact_makes_the_document_stale():
    text = DOC.read_text().replace("`1.2.840.10008.1.2.1`", "`1.2.840.10008.1.2.99`", 1)
    assert conformance.blocks(text)["scp-transfer-syntaxes"] != conformance.tables()["scp-transfer-syntaxes"]


def test_created_sop_classes_are_what_the_writers_make():
    inputs = make_inputs(seed=3, n_slices=16, size=64, label="covid19")
    built = build_result_objects(inputs.result, inputs.volume, inputs.sources, WriterOptions(uid_seed="conf"))
    made = {kind: {str(ds.SOPClassUID) for ds in datasets} for kind, datasets in built.items() if datasets}
    assert made == {kind: {uid} for kind, uid in conformance.CREATED_SOP_CLASSES.items()}


def test_prose_names_the_codes_uids_and_statuses():
    text = DOC.read_text()
    assert str(header.IMPLEMENTATION_CLASS_UID) in text
    assert header.IMPLEMENTATION_VERSION.startswith("COVIDNODE")
    statuses = {
        header.STATUS_OUT_OF_RESOURCES,
        header.STATUS_DATASET_MISMATCH,
        header.STATUS_CANNOT_UNDERSTAND,
        header.STATUS_PROCESSING_FAILURE,
        fastscp.SOP_CLASS_NOT_SUPPORTED,
    }
    named = {int(m, 16) for m in re.findall(r"`0x([0-9A-F]{4})`", text)} - {0}
    assert named == statuses
