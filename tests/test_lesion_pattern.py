"""The lesion pattern (pipeline.lesion_pattern): features on hand-made masks, the model's
fit and card round trip, its place in the decision and the calibration, and
``dicomnode train lesion-pattern`` on a tiny bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.decision import OperatingPoints, decide
from pipeline.lesion_pattern import (
    FEATURE_NAMES,
    NO_LESION,
    LesionPatternModel,
    fit_lesion_pattern,
    lesion_pattern_features,
)
from pipeline.types import (
    TASK_NAMES,
    CaseScores,
    CTVolume,
    DomainCheck,
    InfectedSlices,
    InvalidInputError,
    LesionBurden,
    LesionPattern,
    LungMask,
)

SHAPE = (20, 64, 64)


def _lungs() -> np.ndarray:
    """Two box lungs, left and right of the midline, slices 2..17."""
    lung = np.zeros(SHAPE, dtype=bool)
    lung[2:18, 12:52, 6:28] = True
    lung[2:18, 12:52, 36:58] = True
    return lung


def _volume(dense: np.ndarray | None = None, hu: float = -100.0) -> CTVolume:
    vol = np.full(SHAPE, -850.0, dtype=np.float32)
    if dense is not None:
        vol[dense] = hu
    return CTVolume(hu=vol, spacing_mm=(2.0, 1.0, 1.0))


def _features(lesion: np.ndarray, hu: float = -100.0) -> dict[str, float]:
    lung = _lungs()
    lesion = lesion & lung
    out = lesion_pattern_features(_volume(lesion, hu), LungMask(mask=lung, method="unet", lesion=lesion))
    assert out is not None and tuple(out) == FEATURE_NAMES
    return out


def test_subpleural_and_central_lesions_are_told_apart() -> None:
    rim = np.zeros(SHAPE, dtype=bool)
    rim[6:14, 14:50, 6:8] = True  # along the outer edge of the right-hand lung
    core = np.zeros(SHAPE, dtype=bool)
    core[6:14, 28:36, 15:19] = True  # the middle of the same lung
    at_rim, at_core = _features(rim), _features(core)
    assert at_rim["subpleural_share"] > 0.9 and at_rim["mean_depth"] < 0.2
    assert at_core["subpleural_share"] == 0.0 and at_core["mean_depth"] > 0.6


def test_laterality_density_and_foci() -> None:
    one = np.zeros(SHAPE, dtype=bool)
    one[4:16, 20:44, 10:24] = True
    both = one.copy()
    both[4:16, 20:44, 40:54] = True
    f_one, f_both = _features(one, hu=0.0), _features(both, hu=-650.0)
    assert f_one["bilateral_share"] == 0.0 and f_both["bilateral_share"] == pytest.approx(0.5)
    assert f_one["consolidation_share"] == 1.0 and f_one["median_hu"] == 0.0
    assert f_both["consolidation_share"] == 0.0
    assert f_one["largest_focus_share"] == 1.0 and f_both["largest_focus_share"] == pytest.approx(0.5)
    assert f_both["log_focus_count"] == pytest.approx(np.log1p(2))
    assert f_both["log_lesion_share"] > f_one["log_lesion_share"]


def test_craniocaudal_position_follows_the_patient_axis() -> None:
    low_index = np.zeros(SHAPE, dtype=bool)
    low_index[2:5, 20:44, 10:24] = True
    lung = _lungs()
    for direction, expected_base in (((1, 0, 0, 0, 1, 0, 0, 0, 1), True), ((1, 0, 0, 0, 1, 0, 0, 0, -1), False)):
        vol = CTVolume(
            hu=np.full(SHAPE, -850.0, dtype=np.float32),
            spacing_mm=(2.0, 1.0, 1.0),
            direction=tuple(float(v) for v in direction),
        )
        f = lesion_pattern_features(vol, LungMask(mask=lung, method="unet", lesion=low_index))
        # z index grows to the head: the lowest indices are the base (position near 1).
        assert (f["craniocaudal_position"] > 0.8) is expected_base


def test_no_lesion_map_and_an_empty_one() -> None:
    lung = _lungs()
    assert lesion_pattern_features(_volume(), LungMask(mask=lung, method="classical")) is None
    empty = lesion_pattern_features(_volume(), LungMask(mask=lung, method="unet", lesion=np.zeros(SHAPE, bool)))
    assert {k: empty[k] for k in NO_LESION} == NO_LESION
    assert empty["log_lesion_share"] == pytest.approx(-4.0)


def _separable(n: int = 12, seed: int = 0) -> tuple[list[dict[str, float]], list[str]]:
    """Features where the class shows in two of them (subpleural: COVID-19, dense: CAP)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for label in ("cap", "influenza", "covid19"):
        for _ in range(n):
            f = {k: float(rng.normal(0.0, 0.1)) for k in FEATURE_NAMES}
            f["subpleural_share"] += 1.0 if label == "covid19" else 0.0
            f["consolidation_share"] += 1.0 if label == "cap" else 0.0
            f["mean_depth"] += 1.0 if label == "influenza" else 0.0
            feats.append(f)
            labels.append(label)
    return feats, labels


def test_fit_predicts_and_survives_the_card() -> None:
    feats, labels = _separable()
    model = fit_lesion_pattern(feats, labels, c=1.0, training={"n_cases": len(labels)})
    assert model.classes == ("cap", "influenza", "covid19")
    test_feats, test_labels = _separable(seed=1)
    predicted = [max(p, key=p.get) for p in map(model.probabilities, test_feats)]
    assert np.mean(np.array(predicted) == np.array(test_labels)) >= 0.9
    again = LesionPatternModel.from_card(json.loads(json.dumps(model.as_card())))
    assert again.probabilities(test_feats[0]) == pytest.approx(model.probabilities(test_feats[0]))
    broken = model.as_card()
    broken["coef"] = broken["coef"][:2]
    with pytest.raises(InvalidInputError, match="coef"):
        LesionPatternModel.from_card(broken)
    with pytest.raises(InvalidInputError, match="two classes"):
        fit_lesion_pattern(feats[:3], labels[:3])


def _case(probs: dict[str, float]) -> CaseScores:
    return CaseScores(
        probabilities=probs,
        tasks={TASK_NAMES[0]: 0.95, TASK_NAMES[1]: 0.5, TASK_NAMES[2]: 0.5},
        label=max(probs, key=probs.get),
        top_k=3,
    )


CAP_BY_CLASSIFIER = {"non_pneumonia": 0.05, "cap": 0.8, "influenza": 0.05, "covid19": 0.1}
COVID_BY_PATTERN = LesionPattern(
    features={k: 0.0 for k in FEATURE_NAMES},
    probabilities={"non_pneumonia": 0.0, "cap": 0.1, "influenza": 0.1, "covid19": 0.8},
)


@pytest.mark.parametrize("weight, expected", [(0.0, "cap"), (1.0, "covid19"), (0.5, "indeterminate")])
def test_the_decision_weighs_the_pattern_as_the_card_says(weight: float, expected: str) -> None:
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.5, lesion_share_threshold=0.01, pattern_weight=weight)
    burden = LesionBurden(volume_ml=300.0, lung_share=0.1, slice_area_mm2=np.zeros(40))
    infected = InfectedSlices(scores=np.linspace(0, 1, 40), z_indices=(38, 39), threshold=0.5)
    domain = DomainCheck(score=0.3, in_domain=True, components={"deep_features": 0.3})
    d = decide(_case(CAP_BY_CLASSIFIER), infected, domain, op, burden, COVID_BY_PATTERN)
    assert d.value == expected
    if weight == 1.0:
        assert "lesion pattern" in d.reason and d.thresholds["pattern_weight"] == 1.0
    if weight == 0.0:
        assert "by the slice classifier" in d.reason and "pattern_weight" not in d.thresholds


def test_train_lesion_pattern_writes_the_card_and_the_chain_uses_it(tmp_path: Path, capsys) -> None:
    """The command on a tiny bundle with a 3-class U-Net: the card gains the model, the
    loaded bundle carries it, the chain reports its probabilities."""
    from dicomnode.commands import train as train_cmd
    from pipeline.chain import analyze
    from pipeline.models import load_bundle
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    from conftest import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", with_unet=True, seed=3)
    # Random U-Net weights draw lesions anywhere: the lowered threshold makes sure some are drawn.
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "lesion-pattern",
            "--data",
            "phantom:count=4,seed=77,size=48,slices=12",
            "--out",
            str(bundle),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert train_cmd.run(args) == 0
    assert "fitted on 4 case(s)" in capsys.readouterr().out
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["lesion_pattern"]["feature_names"] == list(FEATURE_NAMES)
    assert "dicomnode train lesion-pattern" in card["lesion_pattern"]["training"]["command"]
    assert "Lesion pattern" in (bundle / "MODEL_CARD.md").read_text()
    loaded = load_bundle(bundle, "cpu")
    assert loaded.lesion_pattern is not None
    ph = make_phantom("covid19", 5, n_slices=12, size_px=48)
    result = analyze(ph.volume, loaded, ChainParams(max_explained_slices=0, compute_phenotype=False))
    summary = result.summary(ph.volume)
    assert set(summary["lesion_pattern_probabilities"]) == set(loaded.lesion_pattern.classes)
    assert sum(summary["lesion_pattern_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
