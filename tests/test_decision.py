"""The decision rules (pipeline.decision) and the operating points read from a card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.decision import OperatingPoints, decide
from pipeline.types import CLASS_NAMES, TASK_NAMES, CaseScores, DomainCheck, InfectedSlices

IN_DOMAIN = DomainCheck(score=0.4, in_domain=True, components={"deep_features": 0.4})


def _case(probs: dict[str, float], pneumonia: float) -> CaseScores:
    p = np.array([probs[c] for c in CLASS_NAMES], dtype=float)
    p = p / p.sum()
    return CaseScores(
        probabilities=dict(zip(CLASS_NAMES, p.tolist(), strict=True)),
        tasks={TASK_NAMES[0]: pneumonia, TASK_NAMES[1]: 0.5, TASK_NAMES[2]: 0.5},
        label=CLASS_NAMES[int(np.argmax(p))],
        top_k=3,
    )


def _infected(n: int) -> InfectedSlices:
    return InfectedSlices(scores=np.linspace(0, 1, 40), z_indices=tuple(range(40 - n, 40)), threshold=0.5)


def test_confident_covid_is_stated() -> None:
    d = decide(
        _case({"non_pneumonia": 0.05, "cap": 0.1, "influenza": 0.05, "covid19": 0.8}, 0.95),
        _infected(6),
        IN_DOMAIN,
        OperatingPoints(),
    )
    assert d.value == "covid19" and d.is_finding and d.is_pneumonia
    assert d.thresholds["pneumonia_vs_non_pneumonia"] == 0.5


def test_close_split_between_two_pneumonia_types_is_indeterminate() -> None:
    # 50.2% vs 49.7%: the example of the issue.
    d = decide(
        _case({"non_pneumonia": 0.001, "cap": 0.502, "influenza": 0.001, "covid19": 0.497}, 0.99),
        _infected(8),
        IN_DOMAIN,
        OperatingPoints(margin=0.1),
    )
    assert d.value == "indeterminate" and not d.is_finding
    assert "CAP" in d.reason and "COVID-19" in d.reason and "margin" in d.reason


def test_score_near_the_pneumonia_threshold_is_indeterminate() -> None:
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.7, pneumonia_margin=0.05)
    assert (
        decide(
            _case({"non_pneumonia": 0.3, "cap": 0.7, "influenza": 0.0, "covid19": 0.0}, 0.72),
            _infected(5),
            IN_DOMAIN,
            op,
        ).value
        == "indeterminate"
    )
    assert (
        decide(
            _case({"non_pneumonia": 0.3, "cap": 0.7, "influenza": 0.0, "covid19": 0.0}, 0.60),
            _infected(5),
            IN_DOMAIN,
            op,
        ).value
        == "non_pneumonia"
    )


def test_pneumonia_without_located_lesions_is_indeterminate() -> None:
    d = decide(
        _case({"non_pneumonia": 0.1, "cap": 0.8, "influenza": 0.05, "covid19": 0.05}, 0.9),
        _infected(0),
        IN_DOMAIN,
        OperatingPoints(min_infected_slices=1),
    )
    assert d.value == "indeterminate" and "locator" in d.reason


def test_out_of_domain_claims_no_class_whatever_the_scores() -> None:
    shifted = DomainCheck(
        score=3.2,
        in_domain=False,
        components={"noise_hu": 3.2},
        reasons=("the image noise (210.0) lies outside the range of its training data",),
    )
    d = decide(
        _case({"non_pneumonia": 0.0, "cap": 0.99, "influenza": 0.005, "covid19": 0.005}, 0.9995),
        _infected(30),
        shifted,
        OperatingPoints(),
    )
    assert d.value == "out_of_domain" and not d.is_finding
    assert "cannot assess" in d.reason and "noise" in d.reason


def test_operating_points_from_card_and_validation() -> None:
    op = OperatingPoints.from_card(
        {
            "operating_points": {
                "pneumonia_vs_non_pneumonia": 0.83,
                "margin": 0.2,
                "min_infected_slices": 2,
                "rule": "Youden",
                "data_specs": ["ignored"],
            }
        }
    )
    assert (op.pneumonia_vs_non_pneumonia, op.margin, op.min_infected_slices, op.rule) == (0.83, 0.2, 2, "Youden")
    assert OperatingPoints.from_card({}) == OperatingPoints()
    with pytest.raises(ValueError):
        OperatingPoints(locator_threshold=1.5)


def test_chain_reads_thresholds_from_the_card(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose card sets the pneumonia threshold above every score decides
    non-pneumonia; one that sets it below every score cannot say non-pneumonia."""
    import shutil

    from pipeline.chain import analyze
    from pipeline.models import load_bundle
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    volume = make_phantom("covid19", 11, 16, 64).volume
    decisions = {}
    for name, t in (("high", 0.9999), ("low", 0.0001)):
        b = tmp_path / name
        shutil.copytree(tiny_bundle, b)
        card = json.loads((b / "model_card.json").read_text())
        card["operating_points"] = {
            "pneumonia_vs_non_pneumonia": t,
            "locator_threshold": 0.0,
            "pneumonia_margin": 0.0,
            "margin": 0.0,
            "rule": "test",
        }
        (b / "model_card.json").write_text(json.dumps(card))
        result = analyze(volume, load_bundle(b, "cpu"), ChainParams(device="cpu", compute_phenotype=False))
        decisions[name] = result.decision
        assert result.infected.threshold == 0.0  # the locator threshold came from the card too
        assert result.decision.thresholds["pneumonia_vs_non_pneumonia"] == t
    assert decisions["high"].value == "non_pneumonia"
    assert decisions["low"].value in ("cap", "influenza", "covid19")


def _burden(share: float, lung_ml: float = 3000.0):
    from pipeline.types import LesionBurden

    return LesionBurden(volume_ml=share * lung_ml, lung_share=share, slice_area_mm2=np.zeros(40))


LESION_OP = OperatingPoints(
    pneumonia_vs_non_pneumonia=0.7,
    pneumonia_margin=0.05,
    lesion_share_threshold=0.01,
    lesion_band=1.5,
    min_infected_slices=1,
)
COVID_PROBS = {"non_pneumonia": 0.2, "cap": 0.1, "influenza": 0.1, "covid19": 0.6}


def test_lesion_evidence_decides_pneumonia_against_non_pneumonia() -> None:
    """With a lesion map, a classifier's high pneumonia score does not make a CT without
    lesions a pneumonia (the shortcut a phantom-trained classifier takes on real CTs)."""
    healthy = decide(_case(COVID_PROBS, 0.95), _infected(0), IN_DOMAIN, LESION_OP, _burden(0.001))
    assert healthy.value == "non_pneumonia"
    assert "0.10% of the lung" in healthy.reason and "1.0%" in healthy.reason
    sick = decide(_case(COVID_PROBS, 0.9), _infected(6), IN_DOMAIN, LESION_OP, _burden(0.08))
    assert sick.value == "covid19" and "8.0% of the lung" in sick.reason


def test_lesion_share_near_its_threshold_is_indeterminate() -> None:
    for share in (0.007, 0.012):  # within a factor 1.5 of 1%, either side
        d = decide(_case(COVID_PROBS, 0.95), _infected(6), IN_DOMAIN, LESION_OP, _burden(share))
        assert d.value == "indeterminate" and "threshold" in d.reason
    assert decide(_case(COVID_PROBS, 0.95), _infected(6), IN_DOMAIN, LESION_OP, _burden(0.006)).value == "non_pneumonia"
    assert decide(_case(COVID_PROBS, 0.95), _infected(6), IN_DOMAIN, LESION_OP, _burden(0.016)).value == "covid19"


def test_lesions_the_classifier_contradicts_are_indeterminate() -> None:
    d = decide(_case(COVID_PROBS, 0.5), _infected(6), IN_DOMAIN, LESION_OP, _burden(0.08))
    assert d.value == "indeterminate" and "does not support pneumonia" in d.reason


def test_uncalibrated_lesion_threshold_falls_back_to_the_classifier() -> None:
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.7)
    assert not op.uses_lesions and "lesion_share_threshold" not in op.thresholds()
    assert decide(_case(COVID_PROBS, 0.95), _infected(6), IN_DOMAIN, op, _burden(0.0)).value == "covid19"
    assert LESION_OP.thresholds()["lesion_share_threshold"] == 0.01
    with pytest.raises(ValueError):
        OperatingPoints(lesion_band=0.5)


def test_measured_lesions_need_no_locator_slices_but_a_classifier_score_does() -> None:
    """With a lesion map the lesions are measured: a CAP whose consolidation the locator
    misses is still CAP. Without one, a pneumonia score with no located slice stays
    indeterminate."""
    cap = {"non_pneumonia": 0.1, "cap": 0.6, "influenza": 0.15, "covid19": 0.15}
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.7, lesion_share_threshold=0.01, min_infected_slices=4)
    assert decide(_case(cap, 0.9), _infected(0), IN_DOMAIN, op, _burden(0.05)).value == "cap"
    assert decide(_case(cap, 0.9), _infected(0), IN_DOMAIN, op, None).value == "indeterminate"
