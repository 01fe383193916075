"""pipeline.figures: the typed metrics result writes the metrics.json the dict code wrote
(same keys, order, types and values), reads it back, and the model card's table of
measured performance renders from it as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import evaluate as E
from pipeline.figures import EvaluationMetrics, Figure
from pipeline.models import render_card_markdown
from pipeline.report import render_report
from pipeline.types import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]
#: compute_metrics(_rich_records(30), ...) as in test_metrics_json_is_the_golden, written
#: by the dict code of commit 432db96, before the metrics result was typed.
GOLDEN = Path(__file__).with_name("golden") / "metrics_rich.json"
BUNDLE = ROOT / "models" / "covid-ct-demo"


def _rich_records(n: int, seed: int = 7) -> list[E.CaseRecord]:
    """Records that fill every optional field, so every section of metrics.json is made."""
    rng = np.random.default_rng(seed)
    out = []
    decisions = list(CLASS_NAMES) + ["indeterminate", "out_of_domain"]
    for i in range(n):
        k = i % 4
        logits = rng.normal(size=4)
        logits[k] += 1.0
        p = np.exp(logits) / np.exp(logits).sum()
        truth = CLASS_NAMES[k]
        ns = 6 + i % 3
        sl = rng.uniform(size=ns)
        st = rng.uniform(size=ns) < (0.1 if k == 0 else 0.5)
        inv = float(rng.uniform(0, 60)) if i % 5 else None
        out.append(
            E.CaseRecord(
                case_id=f"r{i}",
                truth=truth,
                probabilities=p,
                tasks=rng.uniform(size=3),
                predicted=CLASS_NAMES[int(np.argmax(p))],
                features=rng.normal(size=5).astype(np.float32),
                sex=("F", "M", None)[i % 3],
                age=float(20 + 3 * i) if i % 4 else None,
                stage=("early", "late", "10", "2")[i % 4],
                lung_dice=float(rng.uniform(0.8, 1)),
                lung_method=("unet", "classical")[i % 2],
                lung_dice_classical=float(rng.uniform(0.7, 0.9)),
                slice_scores=sl,
                slice_truth=st,
                slice_flagged=sl > 0.6,
                decision=decisions[i % len(decisions)],
                out_of_domain_score=float(rng.uniform()) if i % 3 else float("nan"),
                n_flagged_slices=int(rng.integers(0, 4)),
                lesion_inclusion=float(rng.uniform(0.5, 1)) if k else None,
                heat_inside_lung=tuple(rng.uniform(0.5, 1, size=2)),
                heat_on_lesion=tuple(rng.uniform(0, 1, size=1 + i % 2)) if k else (),
                lesion_share=float(rng.uniform(0, 0.2 if k else 0.02)),
                lesion_overlap=(int(rng.integers(0, 50)), 60, int(rng.integers(1, 70))) if k else (0, 3, 0),
                pattern_probabilities=rng.dirichlet(np.ones(4)),
                involvement_percent=inv,
                involvement_truth_percent=float(rng.uniform(0, 60)) if inv is not None else None,
                grade_truth=int(rng.integers(0, 5)) if inv is not None else None,
                lobe_dice=tuple(float(x) if x > 0.1 else float("nan") for x in rng.uniform(0, 1, size=5)),
                lobe_involvement_error=tuple(rng.normal(size=5)) if i % 2 else None,
            )
        )
    return out


def _calls(records: list[E.CaseRecord]) -> list[E.ReaderCall]:
    calls = [
        E.ReaderCall(r.case_id, f"R{k}", r.truth if (i + k) % 5 else CLASS_NAMES[0])
        for i, r in enumerate(records)
        for k in (1, 2)
    ]
    return calls + [E.ReaderCall("nope", "R1", "cap")]


def _rich_metrics() -> EvaluationMetrics:
    records = _rich_records(30)
    return E.compute_metrics(
        records,
        threshold=0.45,
        eval_params=E.EvalParams(n_bootstrap=40, seed=3),
        locator_threshold=0.6,
        reader_calls=_calls(records),
        reader_task_name="pneumonia_vs_non_pneumonia",
        task_thresholds={"covid19_vs_cap": 0.3},
    )


def _assert_same_json(got, want, path: str = "") -> None:
    """Same keys in the same order, same types, same values (floats to 1e-9: the golden
    must not fail on a library's last bit)."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            _assert_same_json(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_json(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    else:
        assert got == want, path


def test_metrics_json_is_the_golden() -> None:
    golden = json.loads(GOLDEN.read_text())
    got = _rich_metrics().to_json()
    _assert_same_json(got, golden)
    # every section of the file is made by these records (the golden covers them all)
    assert {"decision", "lesion_pattern", "severity", "lobes", "heat_on_lesion", "readers"} <= set(got)
    assert "grade_kappa_quadratic" in got["severity"] and got["readers"]["rows"][-1]["meaning"]


def test_write_outputs_writes_the_golden_and_reads_it_back(tmp_path: Path) -> None:
    records = _rich_records(30)
    m = _rich_metrics()
    E.write_outputs(records, m, tmp_path, E.EvalParams(n_bootstrap=40, seed=3), plots=False)
    text = (tmp_path / "metrics.json").read_text()
    on_disk = json.loads(text)
    _assert_same_json(on_disk, {**json.loads(GOLDEN.read_text()), "plots": {}})
    back = EvaluationMetrics.from_json(on_disk)
    assert back == replace(m, plots={})  # read back: the same figures
    assert json.dumps(back.to_json(), indent=2, allow_nan=False) + "\n" == text
    assert render_report(back) == (tmp_path / "report.md").read_text()


def test_attributes_hold_the_figures() -> None:
    m = _rich_metrics()
    j = m.to_json()
    assert m.n_cases == j["n_cases"] == 30
    assert m.classes.per_class_auc["cap"] == Figure.from_json(j["per_class_auc"]["cap"])
    assert m.severity.grade.kappa_quadratic.value == j["severity"]["grade_kappa_quadratic"]["value"]
    assert m.heat_inside_lung.share_at_least_0_8 == j["heat_inside_lung"]["share_of_overlays_at_least_0.8"]
    assert [r.name for r in m.readers.rows] == [r["name"] for r in j["readers"]["rows"]]
    assert m.tasks["covid19_vs_cap"].threshold == 0.3 and m.decision_threshold == 0.45


def test_figure_without_interval_and_undefined() -> None:
    m = E.compute_metrics(_rich_records(9, seed=2), eval_params=E.EvalParams(n_bootstrap=0))
    auc = m.classes.per_class_auc["cap"]
    assert auc.value is not None and auc.ci_low is None and auc.ci_high is None
    assert Figure.from_json({"value": None, "ci_low": None, "ci_high": None}) == Figure(None)


def test_a_model_cards_records_parse_and_its_markdown_is_unchanged() -> None:
    """The card keeps part of each metrics.json (scripts/record_card_metrics.py); its table
    of measured performance is rendered from those records through EvaluationMetrics."""
    card = json.loads((BUNDLE / "model_card.json").read_text())
    for name, rec in {**card["metrics"]["evaluations"], **card["cross_family"]}.items():
        m = EvaluationMetrics.from_json(rec)
        assert m.run is None and m.readers is None, name  # not kept in the card
        assert m.classes.multiway_auc.macro == Figure.from_json(rec["multiway_auc"]["macro"]), name
    assert render_card_markdown(card) == (BUNDLE / "MODEL_CARD.md").read_text()
