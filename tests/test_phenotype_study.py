"""The phenotype study: its statistics on hand-made data (pipeline.phenotype_stats), the
feature collection with the tiny random bundle, the cluster heat map, and
``dicomnode phenotype`` end to end on small phantoms."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from pipeline.params import ChainParams, PhenotypeStudyParams
from pipeline.phenotype_stats import (
    Comparison,
    FeatureTable,
    benjamini_hochberg,
    compare,
    one_standard_error_choice,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COVID_VS_CAP = Comparison("covid19_vs_cap", "covid19", "cap")


def _hand_made_table(n_per_class: int = 20, seed: int = 0) -> FeatureTable:
    """COVID-19 and CAP cases: ``signal`` is 2.5 SD higher in COVID-19, ``noise_*`` are
    the same distribution in both, ``constant`` never changes, ``mostly_missing`` is
    measured in a quarter of the cases."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    labels = ("covid19",) * n_per_class + ("cap",) * n_per_class
    columns = {"signal": rng.normal(size=n) + 2.5 * (np.arange(n) < n_per_class)}
    columns |= {f"noise_{k}": rng.normal(size=n) for k in range(6)}
    columns["constant"] = np.full(n, 7.0)
    columns["mostly_missing"] = np.where(np.arange(n) % 4 == 0, rng.normal(size=n), np.nan)
    names = tuple(columns)
    return FeatureTable(
        case_ids=tuple(f"case-{i}" for i in range(n)),
        labels=labels,
        names=names,
        values=np.column_stack([columns[k] for k in names]),
    )


def test_the_discriminative_feature_is_selected_and_significant_and_noise_is_not() -> None:
    result = compare(_hand_made_table(), COVID_VS_CAP, PhenotypeStudyParams())
    assert (result.n_positive, result.n_negative) == (20, 20)
    assert set(result.left_out) == {"constant", "mostly_missing"}
    selection = result.selection
    assert selection is not None
    assert selection.features[0] == "signal" and selection.coefficients[0] > 0  # towards COVID-19
    assert not any(f.startswith("noise_") for f in selection.features)
    tests = {t.feature: t for t in result.tests}
    assert set(tests) == set(result.candidates)
    assert tests["signal"].t_p_bh < 0.05 and tests["signal"].ks_p_bh < 0.05
    assert tests["signal"].mean_positive > tests["signal"].mean_negative
    for name in (f"noise_{k}" for k in range(6)):
        assert tests[name].t_p_bh > 0.05 and tests[name].ks_p_bh > 0.05
    for t in result.tests:
        assert 0.0 <= t.t_p <= t.t_p_bh <= 1.0 and 0.0 <= t.ks_p <= t.ks_p_bh <= 1.0


def test_selection_is_capped_and_reproducible() -> None:
    table = _hand_made_table()
    rng = np.random.default_rng(5)
    shifted = table.values.copy()
    shifted[:20, 1:7] += rng.uniform(1.0, 2.0, size=6)  # every noise feature now separates too
    strong = FeatureTable(table.case_ids, table.labels, table.names, shifted)
    first = compare(strong, COVID_VS_CAP, PhenotypeStudyParams(max_selected=3))
    again = compare(strong, COVID_VS_CAP, PhenotypeStudyParams(max_selected=3))
    assert first.selection is not None and first.selection == again.selection
    assert len(first.selection.features) == 3 < first.selection.n_nonzero
    magnitudes = [abs(c) for c in first.selection.coefficients]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_benjamini_hochberg_by_hand() -> None:
    # Sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.06, 0.0533, 0.20 -> running minimum from the top.
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.20, float("nan")])
    np.testing.assert_allclose(adjusted[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.20])
    assert math.isnan(adjusted[4])


def test_one_standard_error_rule_takes_the_sparsest_model_near_the_best() -> None:
    # Columns: C grid from strong to weak penalty; rows: folds (scores, higher is better).
    scores = np.array(
        [
            [-0.69, -0.40, -0.29, -0.30, -0.45],
            [-0.69, -0.36, -0.27, -0.20, -0.40],
            [-0.69, -0.44, -0.31, -0.29, -0.50],
        ]
    )
    best_mean, best_se = scores[:, 3].mean(), scores[:, 3].std(ddof=1) / np.sqrt(3)
    assert scores[:, 2].mean() >= best_mean - best_se > scores[:, 1].mean()
    assert one_standard_error_choice(scores) == 2


def test_a_comparison_with_too_few_cases_says_so() -> None:
    table = _hand_made_table().of_classes(("covid19",))
    result = compare(table, COVID_VS_CAP, PhenotypeStudyParams())
    assert result.selection is None and result.tests == () and "0 cap" in result.note


def test_cluster_heat_map_orders_cases_into_their_clusters(tmp_path: Path) -> None:
    from matplotlib.image import imread

    from pipeline.phenotype_plots import cluster_order, plot_cluster_heatmap

    rng = np.random.default_rng(3)
    values = np.vstack([rng.normal(0, 0.1, (5, 4)), rng.normal(3, 0.1, (5, 4))])[rng.permutation(10)]
    order = cluster_order(values)
    groups = (values[order, 0] > 1.5).astype(int)
    assert np.count_nonzero(np.diff(groups)) == 1  # each cluster is one contiguous run
    path = tmp_path / "heat.png"
    labels = ["covid19" if v > 1.5 else "cap" for v in values[:, 0]]
    plot_cluster_heatmap(values, labels, [f"feature_{j}" for j in range(4)], path, "test")
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300 and image[..., :3].std() > 0.05  # drawn, not blank


def test_collect_features_with_the_tiny_random_bundle(tiny_bundle: Path) -> None:
    """Random weights give speckled Guided Grad-CAM maps: a lower threshold and no opening
    turn them into regions, so every step of the collection runs."""
    from pipeline.datasets import open_dataset
    from pipeline.models import load_bundle
    from pipeline.phenotype_cohort import collect_features

    cases = list(open_dataset("phantom:count=4,seed=7,size=64,slices=16,mix=1:1:1:1"))
    params = ChainParams(device="cpu", attention_threshold=0.3, attention_morph_radius_px=1, max_explained_slices=2)
    study = PhenotypeStudyParams(log_sigma_mm=(2.0,), wavelet=True)
    cohort = collect_features(cases, load_bundle(tiny_bundle, "cpu"), params, study, progress=False)
    pneumonia = [c for c in cases if c.label != "non_pneumonia"]
    assert cohort.n_non_pneumonia == len(cases) - len(pneumonia)
    assert len(cohort.cases) + len(cohort.skipped) == len(pneumonia) and cohort.cases
    assert cohort.table.case_ids == tuple(c.case_id for c in cohort.cases)
    assert all(0 < len(c.explained_slices) <= 2 and c.region_count > 0 for c in cohort.cases)
    prefixes = {name.split("_", 1)[0] for name in cohort.table.names if "_firstorder_" in name}
    assert prefixes == {"original", "log-sigma-2-0-mm-2D", "wavelet-LL", "wavelet-LH", "wavelet-HL", "wavelet-HH"}
    assert {"pleura_distance_mm", "fractal_dimension_2d", "fractal_dimension_3d_grey"} <= set(cohort.table.names)


def _run_cli(*args: str) -> int:
    from dicomnode.cli import main  # in-process: the subprocess start costs more than the check

    return main(["phenotype", *args, "--device", "cpu", "--no-progress"])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_tests_csv(rows: list[dict[str, str]], selected: dict) -> None:
    for row in rows:
        if min(int(row["n_positive"]), int(row["n_negative"])) < 2:  # not testable: no p-value
            assert row["t_p"] == row["ks_p"] == row["t_p_bh"] == row["ks_p_bh"] == "", row["feature"]
            continue
        for raw, adjusted in (("t_p", "t_p_bh"), ("ks_p", "ks_p_bh")):
            assert 0.0 <= float(row[raw]) <= float(row[adjusted]) <= 1.0, row["feature"]
    for name, block in selected["comparisons"].items():
        chosen = {s["feature"] for s in block["selected"]}
        flagged = {r["feature"] for r in rows if r["comparison"] == name and r["lasso_selected"] == "1"}
        assert flagged == chosen


def test_cli_end_to_end_on_small_phantoms(tmp_path: Path) -> None:
    """``dicomnode phenotype`` with the shipped demo bundle (trained: its attention makes
    regions at the chain's own settings) on 10 small COVID-19 and CAP phantoms."""
    out = tmp_path / "study"
    spec = "phantom:count=10,seed=11,size=128,slices=16,mix=0:1:0:1"
    assert _run_cli("--data", spec, "--out", str(out), "--explained-slices", "3", "--log-sigma", "2") == 0
    features = _read_csv(out / "features.csv")
    columns = list(features[0])
    assert columns[:5] == ["case_id", "label", "decision", "region_count", "explained_slices"]
    assert {"pleura_distance_mm", "fractal_dimension_2d", "fractal_dimension_3d_grey"} <= set(columns)
    assert any(c.startswith("log-sigma-2-0-mm-2D_glcm_") for c in columns)
    assert any(c.startswith("wavelet-HH_gldm_") for c in columns)
    assert {r["label"] for r in features} <= {"covid19", "cap"}
    selected = json.loads((out / "selected.json").read_text())
    assert selected["synthetic_data"] is True and selected["data_spec"] == spec
    assert "Benjamini-Hochberg" in selected["settings"]["statistics"]["multiple testing"]
    block = selected["comparisons"]["covid19_vs_cap"]
    assert block["note"] is None, block["note"]  # enough cases of both classes for the statistics
    assert block["n_positive"] + block["n_negative"] == len(features)
    assert len(block["selected"]) <= 12 and {s["feature"] for s in block["selected"]} <= set(columns[5:])
    _check_tests_csv(_read_csv(out / "tests.csv"), selected)
    report = (out / "report.md").read_text()
    assert report.startswith("# Phenotype study report") and "Synthetic data" in report
    for png in ("heatmap_covid19_vs_cap.png", "shape_features.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC and (out / png).stat().st_size > 10_000
        assert f"({png})" in report
    assert not (out / "heatmap_covid19_vs_influenza.png").exists()  # no influenza case: not run, and said
    assert "covid19 vs influenza" in report and "not run" in report


def test_cli_bad_input_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert _run_cli("--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")) == 2
    spec = "phantom:count=2,seed=3,size=64,slices=16"
    assert _run_cli("--data", spec, "--data", spec, "--out", str(tmp_path / "r")) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "missing.csv" in errors[0] and "appears twice" in errors[1]
    assert "Traceback" not in "".join(errors) and not (tmp_path / "r").exists()
