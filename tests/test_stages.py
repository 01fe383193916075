"""Multi-stage fusion (pipeline.stages): the rules on hand-made stages, exact figures."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from pipeline.decision import OperatingPoints
from pipeline.stages import MULTI_STAGE_RULES, Stage, fuse_stages, multi_stage_summary, stage_from_summary
from pipeline.types import InvalidInputError


def stage(uid, date, probs, pneumonia, decision="covid19", current=False, lesion=None, pattern=None):
    non, cap, flu, covid = probs
    return Stage(
        study_uid=uid,
        study_date=None if date is None else dt.date.fromisoformat(date),
        decision=decision,
        probabilities={"non_pneumonia": non, "cap": cap, "influenza": flu, "covid19": covid},
        tasks={"pneumonia_vs_non_pneumonia": pneumonia, "covid19_vs_cap": 0.5, "covid19_vs_influenza": 0.5},
        lesion_share=lesion,
        pattern=pattern,
        current=current,
    )


EARLY = stage("1.1", "2026-01-10", (0.40, 0.10, 0.10, 0.40), 0.60, decision="indeterminate")
LATER = stage("1.2", "2026-03-15", (0.10, 0.10, 0.10, 0.70), 0.90, current=True)


def test_mean_is_the_default_rule():
    assert MULTI_STAGE_RULES[0] == "mean"
    fused = fuse_stages([LATER, EARLY])
    assert [s.study_uid for s in fused.stages] == ["1.1", "1.2"]  # oldest first
    assert fused.current is LATER and fused.priors == (EARLY,)
    assert fused.probabilities == pytest.approx(
        {"non_pneumonia": 0.25, "cap": 0.10, "influenza": 0.10, "covid19": 0.55}
    )
    assert fused.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.75)
    assert fused.decision == "covid19" and fused.fused == ("1.1", "1.2")
    assert fused.reason.startswith("COVID-19: fused pneumonia score 75.0%") and "(mean of 2 stage(s))" in fused.reason


def test_the_mean_can_pull_a_later_pneumonia_below_the_threshold():
    healthy = stage("1.1", "2026-01-10", (0.90, 0.04, 0.03, 0.03), 0.10, decision="non_pneumonia")
    mild = stage("1.2", "2026-03-15", (0.40, 0.10, 0.10, 0.40), 0.62, current=True)
    assert fuse_stages([healthy, mild], "mean").decision == "non_pneumonia"  # (0.10 + 0.62) / 2 = 0.36
    by_max = fuse_stages([healthy, mild], "max")
    assert by_max.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.62)
    assert by_max.decision == "covid19"
    # max: pneumonia classes their maximum, non-pneumonia its minimum, renormalised
    raw = {"non_pneumonia": 0.40, "cap": 0.10, "influenza": 0.10, "covid19": 0.40}
    assert by_max.probabilities == pytest.approx({k: v / 1.0 for k, v in raw.items()})
    latest = fuse_stages([healthy, mild], "latest")
    assert latest.fused == ("1.2",) and latest.tasks["pneumonia_vs_non_pneumonia"] == pytest.approx(0.62)


def test_operating_points_decide_the_fused_scores():
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.78, pneumonia_margin=0.05)
    assert fuse_stages([EARLY, LATER], op=op).decision == "indeterminate"  # 0.75 within 5 points of 0.78
    op = OperatingPoints(pneumonia_vs_non_pneumonia=0.5, margin=0.7)
    fused = fuse_stages([EARLY, LATER], op=op)
    assert fused.decision == "indeterminate" and "margin" in fused.reason


def test_lesion_share_decides_when_the_bundle_is_calibrated_with_a_lesion_map():
    op = OperatingPoints(lesion_share_threshold=0.02, lesion_band=1.5)
    a = stage(
        "1.1",
        "2026-01-10",
        (0.1, 0.1, 0.1, 0.7),
        0.9,
        lesion=0.001,
        pattern={"cap": 0.1, "influenza": 0.1, "covid19": 0.8},
    )
    b = stage(
        "1.2",
        "2026-03-15",
        (0.1, 0.1, 0.1, 0.7),
        0.9,
        lesion=0.011,
        current=True,
        pattern={"cap": 0.1, "influenza": 0.1, "covid19": 0.8},
    )
    fused = fuse_stages([a, b], op=op)
    assert fused.lesion_share == pytest.approx(0.006)
    assert fused.decision == "non_pneumonia"  # 0.6% < 2% / 1.5
    b2 = stage(
        "1.2",
        "2026-03-15",
        (0.1, 0.1, 0.1, 0.7),
        0.9,
        lesion=0.099,
        current=True,
        pattern={"cap": 0.1, "influenza": 0.1, "covid19": 0.8},
    )
    assert fuse_stages([a, b2], op=op).decision == "covid19"  # 5.0% above 3%
    no_map = stage("1.2", "2026-03-15", (0.1, 0.1, 0.1, 0.7), 0.9, current=True)
    fused = fuse_stages([a, no_map], op=op)  # one stage without a lesion map: the classifier decides
    assert fused.lesion_share is None and fused.decision == "covid19"


def test_out_of_domain_stages_are_left_out():
    odd = Stage("1.0", dt.date(2025, 12, 1), "out_of_domain", {})
    fused = fuse_stages([odd, EARLY, LATER])
    assert fused.fused == ("1.1", "1.2") and "1 stage(s) left out" in fused.reason
    alone = fuse_stages([odd])
    assert alone.decision == "out_of_domain" and alone.probabilities == {}
    # the current study out of domain: the priors alone do not make a decision about now
    odd_now = Stage("1.3", dt.date(2026, 4, 1), "out_of_domain", {}, current=True)
    now = fuse_stages([EARLY, replace(LATER, current=False), odd_now])
    assert now.decision == "out_of_domain" and now.fused == () and "current study" in now.reason


def test_bad_input_is_refused():
    with pytest.raises(InvalidInputError, match="rule"):
        fuse_stages([EARLY], "median")
    with pytest.raises(InvalidInputError, match="at least one"):
        fuse_stages([])
    with pytest.raises(InvalidInputError, match="current"):
        fuse_stages([LATER, LATER])
    with pytest.raises(InvalidInputError, match="decision"):
        Stage("1", None, "maybe", {})
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        stage("1", None, (0.1, 0.1, 0.1, 1.7), 0.5)


def test_stages_from_summaries_and_back():
    summary = {
        "decision": "covid19",
        "probabilities": {"non_pneumonia": 0.1, "cap": 0.1, "influenza": 0.1, "covid19": 0.7},
        "tasks": {"pneumonia_vs_non_pneumonia": 0.9, "covid19_vs_cap": 0.8, "covid19_vs_influenza": 0.8},
        "lesion_share_of_lung": 0.05,
        "lung_involvement_percent": 5.0,
        "lesion_pattern_probabilities": {"cap": 0.2, "influenza": 0.2, "covid19": 0.6},
    }
    s = stage_from_summary(summary, "1.2", dt.date(2026, 3, 15), current=True)
    assert (
        s.lesion_share == 0.05
        and s.involvement_percent == 5.0
        and s.pattern == {"cap": 0.2, "influenza": 0.2, "covid19": 0.6}
    )
    bare = stage_from_summary(
        {
            **summary,
            "lesion_share_of_lung": None,
            "lung_involvement_percent": None,
            "lesion_pattern_probabilities": None,
        },
        "1.1",
        None,
    )
    assert bare.lesion_share is None and bare.involvement_percent is None and bare.pattern is None
    out = multi_stage_summary(fuse_stages([bare, s]))
    assert [x["study_uid"] for x in out["stages"]] == ["1.1", "1.2"] and out["stages"][0]["study_date"] is None
    assert out["stages"][1]["lung_involvement_percent"] == 5.0 and out["decision"] == "covid19"
    assert out["rule"] == "mean" and out["fused_studies"] == ["1.1", "1.2"]
