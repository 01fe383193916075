"""pipeline.evaluate: metrics dict, reader comparison, report folder, and ``dicomnode
evaluate`` end to end on tiny phantoms with the tiny random bundle."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pipeline import evaluate as E
from pipeline.figures import EvaluationMetrics
from pipeline.types import (
    CLASS_NAMES,
    TASK_NAMES,
    AnalysisResult,
    CaseScores,
    CTVolume,
    Decision,
    DomainCheck,
    InfectedSlices,
    LungMask,
    ModelInfo,
    SliceScores,
)

from conftest import dicomnode_exe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE_KEYS = {"value", "ci_low", "ci_high"}


def _records(n: int, seed: int = 0, with_extras: bool = True) -> list[E.CaseRecord]:
    """Synthetic records: scores with some signal, demographics, masks data."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % 4
        logits = rng.normal(size=4)
        logits[k] += 1.5
        p = np.exp(logits) / np.exp(logits).sum()
        truth = CLASS_NAMES[k]
        covid = truth == "covid19"
        out.append(
            E.CaseRecord(
                case_id=f"case-{i:03d}",
                truth=truth,
                probabilities=p,
                tasks=rng.uniform(size=3),
                predicted=CLASS_NAMES[int(np.argmax(p))],
                features=rng.normal(size=6).astype(np.float32),
                sex=("F", "M")[i % 2] if with_extras else None,
                age=float(25 + 2 * i) if with_extras else None,
                stage=str(i % 2 + 1) if with_extras else None,
                lung_dice=0.95 if with_extras else None,
                slice_scores=rng.uniform(size=8) if with_extras and covid else None,
                slice_truth=np.arange(8) < 4 if with_extras and covid else None,
            )
        )
    return out


def _walk_figures(obj, path=""):
    """Every dict in metrics that looks like a figure (has a "value" key)."""
    if isinstance(obj, dict):
        if "value" in obj:
            yield path, obj
        else:
            for k, v in obj.items():
                yield from _walk_figures(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_figures(v, f"{path}[{i}]")


def test_compute_metrics_shape_and_values_equal_sklearn() -> None:
    recs = _records(48)
    ep = E.EvalParams(n_bootstrap=50, seed=1)
    m = E.compute_metrics(recs, 0.5, ep)
    labels = np.array([CLASS_NAMES.index(r.truth) for r in recs])
    probs = np.stack([r.probabilities for r in recs])
    tasks = np.stack([r.tasks for r in recs])
    c_, mw = m.classes, m.classes.multiway_auc
    assert set(c_.per_class_auc) == set(CLASS_NAMES)
    for i, c in enumerate(CLASS_NAMES):
        assert c_.per_class_auc[c].value == pytest.approx(roc_auc_score(labels == i, probs[:, i]))
    assert mw.micro.value == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="micro"))
    assert mw.macro.value == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    # covid19 vs CAP is measured on covid19 + CAP cases only
    sel = np.isin(labels, [1, 3])
    t = TASK_NAMES.index("covid19_vs_cap")
    assert m.tasks["covid19_vs_cap"].n_cases == int(sel.sum())
    assert m.tasks["covid19_vs_cap"].auc.value == pytest.approx(roc_auc_score(labels[sel] == 3, tasks[sel, t]))
    t = TASK_NAMES.index("pneumonia_vs_non_pneumonia")
    assert m.tasks["pneumonia_vs_non_pneumonia"].n_cases == len(recs)
    assert m.tasks["pneumonia_vs_non_pneumonia"].auc.value == pytest.approx(roc_auc_score(labels != 0, tasks[:, t]))
    assert sum(map(sum, c_.confusion_matrix.counts)) == len(recs)
    assert m.lung_dice.mean.value == pytest.approx(0.95)
    assert m.locating.n_cases == 12 and m.locating.n_slices == 96
    assert list(m.subsets["age_band"]) == ["<40", "40-59", ">=60"]
    assert set(m.subsets["sex"]) == {"F", "M"}
    for path, fig in _walk_figures(m.to_json()):
        assert set(fig) == FIGURE_KEYS, path
        if fig["value"] is not None and fig["ci_low"] is not None:
            assert fig["ci_low"] <= fig["ci_high"], path


def test_compute_metrics_is_seeded() -> None:
    recs = _records(20)
    a = E.compute_metrics(recs, 0.5, E.EvalParams(n_bootstrap=40, seed=5))
    b = E.compute_metrics(recs, 0.5, E.EvalParams(n_bootstrap=40, seed=5))
    c = E.compute_metrics(recs, 0.5, E.EvalParams(n_bootstrap=40, seed=6))
    assert a == b
    assert a.classes.per_class_auc != c.classes.per_class_auc
    assert a.classes.per_class_auc["cap"].value == c.classes.per_class_auc["cap"].value


def test_compute_metrics_without_optional_data_and_without_bootstrap() -> None:
    m = E.compute_metrics(_records(12, with_extras=False), 0.5, E.EvalParams(n_bootstrap=0))
    assert m.lung_dice is None and m.locating is None and m.subsets == {} and m.readers is None
    assert m.classes.per_class_auc["cap"].ci_low is None and m.classes.per_class_auc["cap"].value is not None
    j = m.to_json()  # metrics.json names the sections it could not measure
    assert j["lung_dice"] is None and j["locating"] is None and j["readers"] is None and "decision" not in j


def test_absent_class_resamples_are_counted() -> None:
    recs = _records(40, with_extras=False)
    # keep a single influenza case: most resamples still have it, many do not
    recs = [r for r in recs if r.truth != "influenza"] + [next(r for r in recs if r.truth == "influenza")]
    m = E.compute_metrics(recs, 0.5, E.EvalParams(n_bootstrap=200, seed=0))
    skipped = m.bootstrap.skipped_resamples
    assert 0 < skipped["per_class_auc.influenza"] < 200
    assert "per_class_auc.cap" not in skipped


def test_reader_comparison_hand_example() -> None:
    # Four COVID-19 / CAP cases: the cohort is read as COVID-19 vs CAP, and the AI's call
    # is the covid19_vs_cap score at 0.5.
    t = TASK_NAMES.index("covid19_vs_cap")

    def rec(cid, truth, covid_vs_cap):
        tasks = np.full(3, 0.5)
        tasks[t] = covid_vs_cap
        return E.CaseRecord(cid, truth, np.full(4, 0.25), tasks, "non_pneumonia")

    recs = [
        rec("a", "covid19", 0.9),
        rec("b", "covid19", 0.2),
        rec("c", "cap", 0.1),
        rec("d", "cap", 0.6),
        rec("e", "non_pneumonia", 0.5),
    ]
    calls = [
        E.ReaderCall("a", "R1", "covid19"),
        E.ReaderCall("b", "R1", "covid19"),
        E.ReaderCall("c", "R1", "covid19"),
        E.ReaderCall("d", "R1", "cap"),
        E.ReaderCall("a", "R2", "cap"),
        E.ReaderCall("b", "R2", "cap"),
        E.ReaderCall("c", "R2", "cap"),
        E.ReaderCall("zz", "R2", "cap"),
    ]
    out = E.reader_comparison(recs, calls, 0.5, E.EvalParams(n_bootstrap=20))
    assert out.task == "covid19_vs_cap" and out.n_cases == 4 and out.unmatched_case_ids == ("zz",)
    rows = {r.name: r for r in out.rows}
    assert (rows["AI"].correct, rows["AI"].wrong) == (2, 2)  # a right, b missed, c right, d false positive
    assert rows["AI"].sensitivity.value == 0.5 and rows["AI"].specificity.value == 0.5
    assert (rows["R1"].correct, rows["R1"].wrong) == (3, 1)
    assert rows["R1"].sensitivity.value == 1.0 and rows["R1"].specificity.value == 0.5
    assert (rows["R2"].n_cases, rows["R2"].correct, rows["R2"].wrong) == (3, 1, 2)
    assert (rows["any reader"].correct, rows["any reader"].wrong) == (4, 0)
    assert (rows["all readers"].correct, rows["all readers"].wrong) == (1, 3)


def test_reader_comparison_pneumonia_task(tmp_path: Path) -> None:
    """Asked for the pneumonia task, a pneumonia call of the wrong kind is still right, the
    AI decides on the pneumonia score, and the readers get their own ROC plot."""
    t = TASK_NAMES.index("pneumonia_vs_non_pneumonia")

    def rec(cid, truth, pneumonia):
        tasks = np.full(3, 0.5)
        tasks[t] = pneumonia
        return E.CaseRecord(cid, truth, np.full(4, 0.25), tasks, "covid19")

    recs = [
        rec("a", "influenza", 0.8),
        rec("b", "covid19", 0.3),
        rec("c", "non_pneumonia", 0.2),
        rec("d", "non_pneumonia", 0.7),
    ]
    calls = [
        E.ReaderCall("a", "R1", "cap"),
        E.ReaderCall("b", "R1", "covid19"),
        E.ReaderCall("c", "R1", "influenza"),
        E.ReaderCall("d", "R1", "non_pneumonia"),
    ]
    ep = E.EvalParams(n_bootstrap=10)
    out = E.reader_comparison(recs, calls, 0.5, ep, task="pneumonia_vs_non_pneumonia")
    assert out.positive_class == "pneumonia"
    rows = {r.name: r for r in out.rows}
    assert (rows["R1"].correct, rows["R1"].wrong) == (3, 1)  # only c (called influenza) is wrong
    assert rows["R1"].sensitivity.value == 1.0 and rows["R1"].specificity.value == 0.5
    assert (rows["AI"].correct, rows["AI"].wrong) == (2, 2)  # a and c right; b missed, d false alarm
    assert E.reader_comparison(recs, calls, 0.5, ep).task == "multi_way"  # not guessed from truths
    with pytest.raises(E.EvaluationError, match="unknown reader task"):
        E.reader_comparison(recs, calls, 0.5, ep, task="covid")
    m = E.write_outputs(
        recs,
        E.compute_metrics(recs, 0.5, ep, reader_calls=calls, reader_task_name="pneumonia_vs_non_pneumonia"),
        tmp_path,
        ep,
    )
    assert (tmp_path / m.plots["roc_readers"]).read_bytes()[:8] == PNG_MAGIC


def test_readers_csv_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "readers.csv"
    bad.write_text("case_id,reader,call\na,R1,covid19\nb,R1,pneumonia\n")
    with pytest.raises(E.EvaluationError, match=r"line 3: call 'pneumonia'"):
        E.read_readers_csv(bad)
    bad.write_text("case,reader,call\n")
    with pytest.raises(E.EvaluationError, match="case_id"):
        E.read_readers_csv(bad)


def test_write_outputs_folder(tmp_path: Path) -> None:
    recs = _records(24)
    calls = [
        E.ReaderCall(r.case_id, f"R{k}", r.truth if (i + k) % 5 else CLASS_NAMES[0])
        for i, r in enumerate(recs)
        for k in (1, 2)
    ]
    ep = E.EvalParams(n_bootstrap=30)
    m = E.write_outputs(recs, E.compute_metrics(recs, 0.5, ep, reader_calls=calls), tmp_path, ep)
    for name in m.plots.values():
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert {"roc", "roc_covid19", "pr", "confusion_matrix", "decision_curve_covid19", "tsne", "roc_locating"} <= set(
        m.plots
    )
    assert all(f"decision_curve_{t}" in m.plots for t in TASK_NAMES)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == m.to_json()
    assert EvaluationMetrics.from_json(on_disk) == m  # read back: the same figures
    report = (tmp_path / "report.md").read_text()
    assert "## Reader comparison" in report and "](roc.png)" in report and "any reader" in report


def test_tsne_small_n() -> None:
    rng = np.random.default_rng(0)
    assert E.tsne_embedding(rng.normal(size=(2, 5)), 0, 30.0) is None
    emb = E.tsne_embedding(rng.normal(size=(5, 5)), 0, 30.0)
    assert emb.shape == (5, 2) and np.all(np.isfinite(emb))


class _Case:
    def __init__(self, case_id, label, volume, lung, lesion):
        self.case_id, self.label, self.patient_id = case_id, label, case_id
        self.sex, self.age, self.stage = "F", "63", None
        self._parts = (volume, lung, lesion)

    def load(self):
        return self._parts


@pytest.mark.parametrize("method", ["classical", "unet"])
def test_score_cases_records_masks_and_features(method: str) -> None:
    """score_cases with a stand-in analyze: Dice, slice truth (> 50 lesion px), features,
    and the classical reference Dice only when the chain used the U-Net."""
    nz = 6
    vol = CTVolume(hu=np.zeros((nz, 32, 32), np.float32), spacing_mm=(1.0, 1.0, 1.0))
    lung = np.zeros((nz, 32, 32), bool)
    lung[:, 4:28, 4:28] = True
    lesion = np.zeros_like(lung)
    lesion[2, 5:15, 5:15] = True  # 100 px: infected
    lesion[3, 5:10, 5:15] = True  # 50 px: not (> 50 needed)

    def fake_analyze(volume, models, params):
        probs = np.tile([0.1, 0.2, 0.3, 0.4], (3, 1))
        feats = np.array([[0, 5], [3, 1], [1, 1]], np.float32)
        scores = np.array([np.nan, 0.2, 0.9, 0.6, 0.1, np.nan])
        return AnalysisResult(
            lung_mask=LungMask(lung.copy(), method),
            slice_scores=SliceScores(np.array([1, 2, 3]), probs, feats),
            case_scores=CaseScores(
                dict(zip(CLASS_NAMES, (0.1, 0.2, 0.3, 0.4), strict=True)),
                dict(zip(TASK_NAMES, (0.9, 0.7, 0.6), strict=True)),
                "covid19",
                3,
            ),
            infected=InfectedSlices(scores, (2, 3), 0.5),
            attention=(),
            phenotype=None,
            lung_volume_ml=1.0,
            model=ModelInfo("m", "0", "x", "", True),
            decision=Decision("covid19", "stand-in", {"pneumonia_vs_non_pneumonia": 0.5, "margin": 0.1}),
            domain=DomainCheck(0.3, True, {}),
        )

    half = lung.copy()
    half[:, :, 16:] = False  # Dice with the truth: 2 * 1/2 / (1 + 1/2) = 2/3
    recs = E.score_cases(
        [_Case("c1", "covid19", vol, lung, lesion)],
        None,
        None,
        progress=False,
        analyze=fake_analyze,
        classical=lambda volume, params: half,
    )
    r = recs[0]
    assert r.lung_dice == 1.0 and r.lung_method == method and r.age == 63.0 and r.sex == "F" and r.stage is None
    if method == "unet":
        assert r.lung_dice_classical == pytest.approx(2 / 3)
    else:
        assert r.lung_dice_classical is None
    np.testing.assert_array_equal(r.features, [3, 5])
    np.testing.assert_allclose(r.slice_scores, [0.2, 0.9, 0.6, 0.1])
    np.testing.assert_array_equal(r.slice_truth, [False, True, False, False])
    assert r.predicted == "covid19" and r.probabilities[3] == 0.4

    def failing(volume, models, params):
        raise ValueError("no lung")

    with pytest.raises(E.EvaluationError, match="case c1"):
        E.score_cases([_Case("c1", "covid19", vol, None, None)], None, None, progress=False, analyze=failing)
    failed = []
    with pytest.raises(E.EvaluationError, match="no case could be evaluated"):
        E.score_cases(
            [_Case("c1", "covid19", vol, None, None)],
            None,
            None,
            progress=False,
            analyze=failing,
            on_failure=lambda cid, err: failed.append((cid, err)),
        )
    assert failed == [("c1", "ValueError: no lung")]


def test_cli_end_to_end(tmp_path: Path, tiny_bundle: Path) -> None:
    """``dicomnode evaluate`` on 4 tiny phantoms with the random tiny bundle, readers included."""
    from pipeline.datasets import open_dataset

    out = tmp_path / "report"
    spec = "phantom:count=4,seed=900000,mix=1:1:1:1,slices=20,size=96"
    cases = list(open_dataset(spec))  # ids and truths only: nothing is loaded yet
    # R1 reads every case right; R2 calls everything COVID-19 (right on the COVID-19 cases only).
    readers = tmp_path / "readers.csv"
    readers.write_text(
        "case_id,reader,call\n" + "".join(f"{c.case_id},R1,{c.label}\n{c.case_id},R2,covid19\n" for c in cases)
    )
    proc = subprocess.run(
        [
            dicomnode_exe(),
            "evaluate",
            "--bundle",
            str(tiny_bundle),
            "--data",
            spec,
            "--out",
            str(out),
            "--bootstrap",
            "50",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--readers",
            str(readers),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.md" in proc.stdout
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == (
        "case_id",
        "truth",
        "p_non_pneumonia",
        "p_cap",
        "p_influenza",
        "p_covid19",
        "pneumonia_vs_non_pneumonia",
        "covid19_vs_cap",
        "covid19_vs_influenza",
        "predicted",
        "decision",
        "out_of_domain_score",
        "flagged_slices",
        "lesion_share",
        "pattern_p_non_pneumonia",
        "pattern_p_cap",
        "pattern_p_influenza",
        "pattern_p_covid19",
    )
    assert [r[0] for r in rows[1:]] == [c.case_id for c in cases]
    assert [r[1] for r in rows[1:]] == [c.label for c in cases]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_cases"] == len(cases) and m["data_spec"] == spec and len(m["bundle_sha256"]) == 64
    assert set(m["per_class_auc"]) == set(CLASS_NAMES)
    truth = np.array([r[1] for r in rows[1:]])
    probs = np.array([[float(x) for x in r[2:6]] for r in rows[1:]])
    for i, c in enumerate(CLASS_NAMES):
        fig = m["per_class_auc"][c]
        assert set(fig) == FIGURE_KEYS
        if (truth == c).any() and not (truth == c).all():  # scores.csv holds 6 decimals
            assert fig["value"] == pytest.approx(roc_auc_score(truth == c, probs[:, i]), abs=1e-3)
    assert m["lung_dice"]["n_cases"] == len(cases) and 0.0 <= m["lung_dice"]["mean"]["value"] <= 1.0
    assert m["locating"] is not None and m["locating"]["n_cases"] == sum(c.label == "covid19" for c in cases)
    rows_by_name = {r["name"]: r for r in m["readers"]["rows"]}
    n_covid = sum(c.label == "covid19" for c in cases)
    assert (rows_by_name["R1"]["correct"], rows_by_name["R2"]["correct"]) == (len(cases), n_covid)
    assert rows_by_name["any reader"]["correct"] == len(cases)
    assert rows_by_name["all readers"]["correct"] == n_covid
    assert rows_by_name["R2"]["sensitivity"]["value"] == 1.0 and rows_by_name["R2"]["specificity"]["value"] == 0.0
    assert rows_by_name["AI"]["n_cases"] == len(cases)
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation report") and "Reader comparison" in report
    for name in m["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert {"roc", "roc_covid19", "pr", "confusion_matrix", "decision_curve_covid19", "tsne"} <= set(m["plots"])
    typed = EvaluationMetrics.from_json(m)
    assert typed.to_json() == m and typed.run.data_spec == spec  # the file reads back whole
    card = E.headline(typed)  # what the training engineer copies into a model card
    assert card["per_class_auc"] == m["per_class_auc"] and card["data_spec"] == spec
    assert card["lung_dice"]["method"] == m["lung_dice"]["method"]


def test_cli_bad_spec_is_one_line_error(tmp_path: Path, tiny_bundle: Path, capsys) -> None:
    from dicomnode.cli import main  # in-process: the subprocess start costs more than the check

    rc = main(
        [
            "evaluate",
            "--bundle",
            str(tiny_bundle),
            "--data",
            str(tmp_path / "missing.csv"),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing.csv" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_severity_figures_compare_involvement_with_truth():
    def rec(cid, truth, pred, true):
        return E.CaseRecord(
            cid,
            truth,
            np.full(4, 0.25),
            np.full(3, 0.5),
            "covid19",
            involvement_percent=pred,
            involvement_truth_percent=true,
        )

    records = [
        rec("a", "covid19", 12.0, 10.0),
        rec("b", "cap", 30.0, 34.0),
        rec("c", "non_pneumonia", 0.5, 0.0),
        rec("d", "covid19", None, 5.0),
    ]  # out of domain: no severity stated, left out
    m = E.compute_metrics(records, eval_params=E.EvalParams(n_bootstrap=0))
    sev = m.severity
    assert sev.n_cases == 3
    assert sev.involvement_mae_points.value == pytest.approx((2 + 4 + 0.5) / 3)
    assert sev.involvement_bias_points.value == pytest.approx((2 - 4 + 0.5) / 3)
    assert sev.grade_agreement.value == pytest.approx(2 / 3)  # 30% is CT-2, 34% too; 0.5% CT-1 vs CT-0
    assert sev.non_pneumonia_involvement_percent.max == 0.5


def test_grade_kappa_confusion_and_bland_altman_with_plots(tmp_path: Path) -> None:
    """Issue 15 item 5: the grade against the truth grade (kappa, confusion matrix), the
    involvement's Bland-Altman limits, both drawn as plots and named in the report."""

    def rec(cid, pred, true, grade=None):
        return E.CaseRecord(
            cid,
            "covid19",
            np.full(4, 0.25),
            np.full(3, 0.5),
            "covid19",
            involvement_percent=pred,
            involvement_truth_percent=true,
            grade_truth=grade if grade is not None else E.mosmed_grade(true),
        )

    records = [rec("a", 10.0, 12.0), rec("b", 30.0, 28.0), rec("c", 60.0, 55.0), rec("d", 80.0, 70.0, grade=3)]
    m = E.compute_metrics(records, eval_params=E.EvalParams(n_bootstrap=20))
    grade = m.severity.grade
    truth, graded = [1, 2, 3, 3], [1, 2, 3, 4]
    assert grade.confusion[3] == (0, 0, 0, 1, 1) and grade.n_cases == 4
    assert grade.kappa_quadratic.value == pytest.approx(
        cohen_kappa_score(truth, graded, weights="quadratic", labels=[0, 1, 2, 3, 4])
    )
    diffs = np.array([-2.0, 2.0, 5.0, 10.0])
    assert m.severity.bland_altman_points.bias == pytest.approx(diffs.mean())
    assert m.severity.bland_altman_points.upper_limit == pytest.approx(diffs.mean() + 1.96 * diffs.std(ddof=1))
    assert m.to_json()["severity"]["grade_confusion"][3] == [0, 0, 0, 1, 1]  # metrics.json's keys
    out = E.write_outputs(records, m, tmp_path, E.EvalParams(n_bootstrap=20))
    for name in ("bland_altman_involvement", "grade_confusion"):
        assert (tmp_path / out.plots[name]).read_bytes()[:8] == PNG_MAGIC
    report = (tmp_path / "report.md").read_text()
    assert "quadratic weighted kappa" in report and "limits of agreement" in report
    assert "](bland_altman_involvement.png)" in report


def test_a_data_sets_severity_grade_is_the_truth_grade() -> None:
    from types import SimpleNamespace

    case = SimpleNamespace(case_id="x", label="covid19", extras={"severity": "CT-3"})
    result = SimpleNamespace(severity=None)
    fields = E._severity_record_fields(case, result, None, None)
    assert fields["grade_truth"] == 3 and fields["involvement_truth_percent"] is None


def test_lobe_record_fields_and_figures():
    from types import SimpleNamespace

    from pipeline.report import render_report
    from pipeline.severity import LOBES, quantify_severity

    truth = np.repeat(np.arange(1, 6, dtype=np.uint8), 8).reshape(5, 2, 4)  # one lobe per slice
    lung = truth > 0
    predicted = truth.copy()
    predicted[1, 0] = 3  # half of the middle lobe's slice called lower lobe
    lesion = np.zeros(lung.shape, dtype=bool)
    lesion[0, 0, :2] = True  # a quarter of the right upper lobe
    severity = quantify_severity(lung, lesion, voxel_ml=1.0, lobes=predicted, min_involved_ml=0.0)
    result = SimpleNamespace(lung_mask=SimpleNamespace(lobes=predicted), severity=severity)
    fields = E._lobe_record_fields(result, truth, lesion)
    dice = dict(zip(LOBES, fields["lobe_dice"], strict=True))
    assert dice["right_upper"] == 1.0 and dice["right_middle"] == pytest.approx(2 * 4 / (4 + 8))
    assert dice["right_lower"] == pytest.approx(2 * 8 / (12 + 8))
    assert fields["lobe_involvement_error"] == pytest.approx((0.0, 0.0, 0.0, 0.0, 0.0))
    assert E._lobe_record_fields(SimpleNamespace(lung_mask=SimpleNamespace(lobes=None)), truth, lesion) == {}
    rec = E.CaseRecord("a", "covid19", np.full(4, 0.25), np.full(3, 0.5), "covid19", **fields)
    m = E.compute_metrics([rec, rec], eval_params=E.EvalParams(n_bootstrap=0))
    lobes = m.lobes
    assert lobes.n_cases == 2 and lobes.per_lobe["right_upper"].dice.value == 1.0
    assert lobes.mean_dice.value == pytest.approx(np.mean(fields["lobe_dice"]))
    assert "right middle lobe" in render_report(m)
