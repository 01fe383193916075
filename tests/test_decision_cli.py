"""The CLI's readable outputs state the decision, never the argmax alone: ``dicomnode
demo``'s summary, ``dicomnode status``'s jobs table, ``dicomnode analyze``'s overlays."""

from __future__ import annotations

import json

import pytest

from dicomnode.commands import analyze as analyze_cmd
from dicomnode.commands import status as status_cmd
from dicomnode.commands.demo import format_summary

from writer_inputs import make_indeterminate_inputs, make_inputs, make_out_of_domain_inputs

CASES = {
    "covid19": lambda: make_inputs(seed=3, n_slices=20, size=64, label="covid19"),
    "cap": lambda: make_inputs(seed=3, n_slices=20, size=64, label="cap"),
    "indeterminate": lambda: make_indeterminate_inputs(seed=3, n_slices=20, size=64),
    "out_of_domain": lambda: make_out_of_domain_inputs(seed=3, n_slices=20, size=64),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    inputs = CASES[request.param]()
    return request.param, inputs, inputs.result.summary(inputs.volume)


def test_demo_summary_leads_with_the_decision(case):
    name, inputs, summary = case
    text = format_summary(summary)
    first = text.splitlines()[0]
    assert (
        first
        == {
            "covid19": "AI decision: COVID-19",
            "cap": "AI decision: community-acquired pneumonia (CAP)",
            "indeterminate": "AI decision: indeterminate (no diagnosis is stated)",
            "out_of_domain": "AI decision: cannot assess this study (out of domain)",
        }[name]
    )
    assert f"why: {inputs.result.decision.reason}" in text
    assert "Not for clinical use" in text and "lung volume" in text
    if name == "covid19":
        assert "COVID-19 infectious slices (InstanceNumber)" in text
    elif name == "cap":
        assert "infectious slices (CAP) (InstanceNumber)" in text and "COVID-19 infectious" not in text
    elif name == "indeterminate":
        assert "infectious slices" not in text and "not a finding" in text
        assert "operating points:" in text and "margin 0.1" in text
    else:
        assert "p(" not in text and "infectious" not in text and "cap" not in text.lower().replace("cannot", "")
        assert "out-of-domain score: 1.70 (threshold 1.00)" in text


def test_status_shows_each_jobs_decision(case, tmp_path):
    name, _, summary = case
    job_dir = tmp_path / "results" / "7"
    job_dir.mkdir(parents=True)
    (job_dir / "summary.json").write_text(json.dumps(summary))
    assert status_cmd.job_decision(job_dir) == name
    assert status_cmd.job_decision(tmp_path / "results" / "8") is None  # not analysed (yet)
    data = {
        "database": "db",
        "series": [],
        "deliveries": [],
        "pending_deliveries": 0,
        "jobs": [{"id": 7, "series_uid": "1.2.3", "state": "done", "decision": name, "attempts": 1, "reason": None}],
    }
    table = status_cmd.render(data)
    assert "decision" in table and f"done   {name}" in table


def test_analyze_overlays_follow_the_decision(case, tmp_path):
    name, inputs, _ = case
    written = analyze_cmd._write_overlays(inputs.result, inputs.volume, tmp_path)
    if name == "out_of_domain":
        assert written == [], "out of domain no Grad-CAM picture is made"
    else:
        assert len(written) == len(inputs.result.attention) >= 1
