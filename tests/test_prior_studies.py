"""The prior_studies table (dicomnode.prior_studies): which studies are priors, and a
link the node asked for is never downgraded."""

from __future__ import annotations

import datetime as dt

from dicomnode.db import Database
from dicomnode.prior_studies import PriorState, PriorStudies


def test_requested_studies_are_priors_and_stay_so(tmp_path):
    links = PriorStudies(Database(tmp_path / "node.sqlite3"))
    assert not links.is_prior("1.1") and links.links_for("2.1") == []
    links.record("1.1", "2.1", dt.date(2026, 1, 10), PriorState.REQUESTED)
    assert links.is_prior("1.1") and not links.is_prior("2.1")
    links.record("1.1", "2.1", dt.date(2026, 1, 10), PriorState.RETRIEVED, "24 instance(s) moved, 0 failed")
    # the new study's job run again finds the prior analysed: it stays retrieved
    links.record("1.1", "2.1", dt.date(2026, 1, 10), PriorState.ANALYSED_BEFORE)
    (link,) = links.links_for("2.1")
    assert link.state == PriorState.RETRIEVED and link.reason == "24 instance(s) moved, 0 failed"
    assert link.study_date == dt.date(2026, 1, 10) and links.is_prior("1.1")


def test_a_study_the_node_analysed_on_its_own_is_not_a_prior(tmp_path):
    links = PriorStudies(Database(tmp_path / "node.sqlite3"))
    links.record("1.0", "2.1", None, PriorState.ANALYSED_BEFORE)
    links.record("1.1", "2.1", dt.date(2025, 5, 1), PriorState.FAILED, "C-MOVE failed")
    assert not links.is_prior("1.0") and links.is_prior("1.1")  # a failed move may still deliver some
    assert [x.study_uid for x in links.links_for("2.1")] == ["1.1", "1.0"]  # the most recent first, unknown last
    assert [x.for_study_uid for x in links.links_of("1.1")] == ["2.1"]
