"""The second validator: PixelMed, as IHE AI Results testing uses it, on every object
kind it knows (SR with TID 1500, KOS with TID 2010, SEG), for each kind of decision.

PixelMed's Debian build has no rules for Secondary Capture; dciodvfy checks those
(tests/test_writers_sc.py). Its remaining warnings are listed in docs/objects.md.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from dicomnode.writers import WriterOptions, build_result_objects

from writer_inputs import DECISION_CASES, PIXELMED_KNOWN_ERRORS, pixelmed


@lru_cache(maxsize=None)
def objects(name: str) -> dict:
    inputs = DECISION_CASES[name]()
    return build_result_objects(
        inputs.result, inputs.volume, inputs.sources, WriterOptions(uid_seed=f"pixelmed-{name}")
    )


#: The SR's content differs by decision; the KOS and SEG do not in structure (one JVM per
#: file costs about 10 s, so each structure is validated once).
CHECKS = [
    ("covid19", "sr"),
    ("indeterminate", "sr"),
    ("out_of_domain", "sr"),
    ("covid19", "kos"),
    ("covid19", "seg"),
    ("covid19", "lobe_seg"),
]


@pytest.mark.parametrize(("case", "kind"), CHECKS)
def test_pixelmed_finds_no_error(case, kind, tmp_path):
    built = objects(case)[kind]
    assert built
    for i, ds in enumerate(built):
        result = pixelmed(ds, tmp_path, f"{case}-{kind}-{i}.dcm")
        errors = [e for e in result.errors if not any(k in e for k in PIXELMED_KNOWN_ERRORS)]
        assert errors == [], result.output
        assert "validation complete" in result.output.lower(), result.output


def test_pixelmed_catches_what_it_should(tmp_path):
    """The check can fail: a TID 1500 procedure code outside CID 100 is an error."""
    sr = objects("covid19")["sr"][0].copy()
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported":
            item.ConceptCodeSequence[0].CodeValue = "24627-2"
            item.ConceptCodeSequence[0].CodeMeaning = "CT Chest"
    result = pixelmed(sr, tmp_path, "bad-sr.dcm")
    assert any("context group 100" in e for e in result.errors), result.output
