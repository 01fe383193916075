"""The out-of-domain guard (pipeline.domain) through a calibrated bundle, and the
not-a-chest-CT refusal."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.chain import analyze
from pipeline.domain import IMAGE_STATS, image_statistics
from pipeline.models import load_bundle
from pipeline.params import ChainParams
from pipeline.phantom import make_phantom
from pipeline.types import CTVolume, InvalidInputError, LungMask

from conftest import dicomnode_exe, make_tiny_bundle

PARAMS = ChainParams(device="cpu", compute_phenotype=False, max_explained_slices=1)
CALIBRATION = "phantom:count=10,seed=4242,slices=16,size=64"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A tiny bundle calibrated by the real command on small phantoms."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("calibrated"), seed=3)
    proc = subprocess.run(
        [
            dicomnode_exe(),
            "calibrate",
            "--bundle",
            str(bundle),
            "--data",
            CALIBRATION,
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "calibrated" in proc.stdout
    return bundle


def _with_hu(volume: CTVolume, hu: np.ndarray) -> CTVolume:
    return replace(volume, hu=hu.astype(np.float32))


def test_calibration_writes_operating_points_and_a_pinned_reference(calibrated: Path) -> None:
    card = json.loads((calibrated / "model_card.json").read_text())
    assert card["operating_points"]["data_specs"] == [CALIBRATION]
    assert card["operating_points"]["n_cases"] == 10
    ref = card["domain_reference"]
    assert (calibrated / ref["file"]).is_file() and len(ref["sha256"]) == 64
    assert set(ref["thresholds"]) == {*IMAGE_STATS, "deep_features"}
    assert "Operating points" in (calibrated / "MODEL_CARD.md").read_text()


def test_guard_passes_in_domain_and_flags_shifted_inputs(calibrated: Path) -> None:
    bundle = load_bundle(calibrated, "cpu")
    base = make_phantom("non_pneumonia", 99, 16, 64).volume  # a seed never calibrated on
    rng = np.random.default_rng(0)
    inside = analyze(base, bundle, PARAMS)
    assert inside.domain.in_domain and inside.decision.value != "out_of_domain", inside.domain
    shifted = {
        "noise far outside training": base.hu + rng.normal(0, 250, base.hu.shape),
        "lung texture of another world": np.where(base.hu < -500, base.hu + 450, base.hu),
    }
    for what, hu in shifted.items():
        result = analyze(_with_hu(base, hu), bundle, PARAMS)
        assert not result.domain.in_domain, what
        assert result.decision.value == "out_of_domain", what
        assert result.domain.score > 1.0 and result.domain.reasons, what
        assert result.attention == ()  # nothing explained out of domain
        assert result.lung_volume_ml > 0  # the lung volume is still reported


def test_tampered_reference_is_refused(calibrated: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.types import ModelBundleError

    copy = tmp_path / "b"
    shutil.copytree(calibrated, copy)
    (copy / "domain_reference.npz").write_bytes(b"not the reference")
    with pytest.raises(ModelBundleError, match="corrupt"):
        load_bundle(copy, "cpu")


def test_image_statistics_of_a_phantom_are_plausible() -> None:
    p = make_phantom("non_pneumonia", 5, 24, 96)
    stats = image_statistics(p.volume, LungMask(p.lung_mask, "classical"))
    assert -950 < stats["lung_hu_median"] < -700
    assert stats["lung_hu_p10"] < stats["lung_hu_median"] < stats["lung_hu_p90"]
    assert 0 < stats["noise_hu"] < 100 and 2000 < stats["lung_volume_ml"] < 9000


def test_a_head_ct_is_not_a_chest_ct(tiny_bundle: Path) -> None:
    z, y, x = np.mgrid[0:24, 0:64, 0:64]
    hu = np.full((24, 64, 64), -1000.0, np.float32)
    r = np.sqrt(((y - 32) / 26.0) ** 2 + ((x - 32) / 22.0) ** 2)
    hu[r < 1.0] = 900.0  # skull
    hu[r < 0.9] = 35.0  # brain
    hu[(r < 0.2) & (z > 18)] = -900.0  # a little air (sinus)
    volume = CTVolume(hu=hu, spacing_mm=(5.0, 3.5, 3.5))
    with pytest.raises(InvalidInputError, match="not a chest CT"):
        analyze(volume, load_bundle(tiny_bundle, "cpu"), PARAMS)
