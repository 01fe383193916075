"""The CXR branch in pipeline/: the localizer projection, the CXR model's input and scores,
the fusion rule, ``dicomnode train cxr`` and the CT / CXR / fused comparison of
``dicomnode evaluate``. Tiny phantoms and tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.cxr import (
    DEFAULT_CXR_CLASSES,
    analyze_radiograph,
    check_classes,
    classify_radiograph,
    ct_class_scores,
    fuse,
    radiograph_input,
)
from pipeline.nets import build_network, cxr_arch
from pipeline.phantom import make_phantom
from pipeline.phantoms import make_phantom_b
from pipeline.projection import LocalizerGeometry, project_localizer
from pipeline.types import CTVolume, InvalidInputError, Radiograph

from conftest import REPO_ROOT, make_tiny_bundle
from writer_inputs import make_indeterminate_inputs, make_inputs, make_out_of_domain_inputs


def _block_volume(x_mm: float, y_mm: float, z_index: int, n: int = 64, spacing: float = 2.0) -> CTVolume:
    """Air with one water voxel column (a 2x2x1 voxel rod) at (x_mm, y_mm) on slice z_index."""
    hu = np.full((16, n, n), -1000.0, np.float32)
    origin = -(n - 1) / 2.0 * spacing
    ix, iy = int(round((x_mm - origin) / spacing)), int(round((y_mm - origin) / spacing))
    hu[z_index, iy : iy + 2, ix : ix + 2] = 0.0
    return CTVolume(hu=hu, spacing_mm=(3.0, spacing, spacing), origin_mm=(origin, origin, 0.0))


def test_projection_geometry_rows_columns_and_fan_magnification():
    geo = LocalizerGeometry()
    # A water rod on the top slice at the patient's left (+x), anterior (-y).
    vol = _block_volume(x_mm=40.0, y_mm=-40.0, z_index=15)
    r = project_localizer(vol, geo)
    assert r.image.shape == (16, 64) and r.pixel_spacing_mm == (3.0, 2.0) and r.source == "localizer"
    row, col = np.unravel_index(int(np.argmax(r.image)), r.image.shape)
    assert row == 0  # the most superior slice is row 0
    centre = (64 - 1) / 2.0
    u_mm = (col - centre) * 2.0
    # Fan beam from 570 mm anterior of the isocentre: an anterior object is magnified.
    expected = 41.0 * geo.source_to_isocenter_mm / (geo.source_to_isocenter_mm - 40.0)
    assert u_mm > 41.0 + 1.5 and abs(u_mm - expected) <= 2.5
    # Line integral: 4 mm of water (two voxels deep) on the central rays.
    assert r.image.max() == pytest.approx(geo.mu_water_per_mm * 4.0, rel=0.25)
    assert r.geometry["source_to_detector_mm"] == geo.source_to_detector_mm
    assert r.geometry["first_row_z_mm"] == pytest.approx(15 * 3.0)
    # The same rod posterior is drawn closer to the centre (less magnified).
    r_post = project_localizer(_block_volume(x_mm=40.0, y_mm=40.0, z_index=15), geo)
    col_post = int(np.argmax(r_post.image[0]))
    assert (col_post - centre) * 2.0 < u_mm - 3.0


def test_projection_refuses_oblique_volumes_and_bad_geometry():
    vol = _block_volume(0.0, 0.0, 3)
    oblique = replace(vol, direction=(0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1))
    with pytest.raises(InvalidInputError, match="axial"):
        project_localizer(oblique)
    with pytest.raises(InvalidInputError, match="source-to-isocentre"):
        LocalizerGeometry(source_to_isocenter_mm=1200.0)


@pytest.mark.parametrize("make", [make_phantom, make_phantom_b])
def test_phantoms_of_both_families_have_a_localizer(make):
    p = make("cap", 7, 20, 64)
    loc = p.localizer()
    assert loc.image.shape == (20, 64)
    assert loc.pixel_spacing_mm == (p.volume.spacing_mm[0], p.volume.spacing_mm[2])
    assert np.array_equal(loc.image, make("cap", 7, 20, 64).localizer().image)  # seeded noise
    # The body attenuates: the middle of the chest is brighter than the air beside it.
    assert float(loc.image[:, 28:36].mean()) > 2.0 * float(loc.image[:, :2].mean())
    # A lesion adds attenuation where it lies (same seed: same anatomy, no lesion).
    clean = project_localizer(make("non_pneumonia", 7, 20, 64).volume)
    assert float((project_localizer(p.volume).image - clean.image).max()) > 0.2


def test_radiograph_input_is_square_standardised_and_keeps_the_shape():
    img = np.zeros((40, 100), np.float32)
    img[10:30, 20:80] = 5.0
    r = Radiograph(image=img, pixel_spacing_mm=(5.0, 2.0))  # 200 mm x 200 mm: already square in mm
    x = radiograph_input(r, 32)
    assert x.shape == (32, 32) and abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    tall = Radiograph(image=img, pixel_spacing_mm=(10.0, 2.0))  # 400 x 200 mm: padded left and right
    y = radiograph_input(tall, 32)
    assert float(y[:, :4].std()) < 1e-3  # padding with the air value


def test_class_sets_are_checked():
    assert check_classes(["covid19", "cap"]) == DEFAULT_CXR_CLASSES
    for bad in (["covid19"], ["covid19", "covid19"], ["covid19", "sars"]):
        with pytest.raises(InvalidInputError, match="CXR classes"):
            check_classes(bad)


def test_classify_radiograph_gives_probabilities_over_the_configured_classes():
    torch.manual_seed(0)
    arch = cxr_arch(("covid19", "cap", "non_pneumonia"), block_inplanes=(4, 8, 8, 16), input_size=32)
    net = build_network(arch).eval()
    loc = make_phantom("covid19", 2, 16, 48).localizer()
    p = classify_radiograph(loc, net, arch["classes"], 32)
    assert tuple(p) == ("covid19", "cap", "non_pneumonia") and sum(p.values()) == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="outputs"):
        classify_radiograph(loc, net, ("covid19", "cap"), 32)


def test_fusion_is_the_mean_over_the_shared_classes_for_a_class_decision():
    inputs = make_inputs(seed=1, label="covid19")  # CT decision COVID-19, in domain
    ct = ct_class_scores(inputs.result, DEFAULT_CXR_CLASSES)
    assert sum(ct.values()) == pytest.approx(1.0) and ct["covid19"] > ct["cap"]
    cxr = {"covid19": 0.2, "cap": 0.8}
    got_ct, fused, decision, reason = fuse(cxr, DEFAULT_CXR_CLASSES, inputs.result)
    assert got_ct == ct and fused is not None
    for c in DEFAULT_CXR_CLASSES:
        assert fused[c] == pytest.approx(0.5 * (ct[c] + cxr[c]))
    assert decision == ("covid19" if fused["covid19"] - fused["cap"] >= 0.1 else "indeterminate")
    assert "fused" in reason
    # Close scores: an indeterminate fused decision, by the margin.
    _, fused2, decision2, _ = fuse(
        {"covid19": 1 - ct["covid19"], "cap": ct["covid19"]}, DEFAULT_CXR_CLASSES, inputs.result
    )
    assert fused2 is not None and fused2["covid19"] == pytest.approx(0.5) and decision2 == "indeterminate"


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: make_indeterminate_inputs(seed=1), "indeterminate"),
        (lambda: make_out_of_domain_inputs(seed=1), "out of domain"),
        (lambda: make_inputs(seed=1, label="influenza"), "does not tell"),
    ],
)
def test_a_ct_the_model_cannot_stand_behind_is_not_overridden(make, why):
    result = make().result
    torch.manual_seed(0)
    arch = cxr_arch(block_inplanes=(4, 8, 8, 16), input_size=32)
    cxr = analyze_radiograph(make_phantom("cap", 3, 16, 48).localizer(), build_network(arch).eval(), arch, result)
    assert cxr.fused is None and cxr.fused_decision is None and why in cxr.reason
    assert sum(cxr.probabilities.values()) == pytest.approx(1.0)
    assert (cxr.ct is None) == (result.decision.value == "out_of_domain")
    summary = replace(result, cxr=cxr).summary(make_inputs(seed=1).volume)["cxr"]
    assert summary["fused_decision"] is None and summary["classes"] == ["covid19", "cap"]


def test_radiograph_alone_is_never_fused():
    _, fused, decision, reason = fuse({"covid19": 0.9, "cap": 0.1}, DEFAULT_CXR_CLASSES, None)
    assert fused is None and decision is None and "radiograph alone" in reason


def test_train_cxr_adds_the_model_and_keeps_the_ct_card(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b")
    card_path = bundle / "model_card.json"
    card = json.loads(card_path.read_text())
    card["metrics"] = {"measured_by": "kept"}
    card["operating_points"] = {"covid19_vs_cap": 0.4}
    card["cxr"] = {"evaluations": {"stale": {}}}
    card_path.write_text(json.dumps(card))
    before = {p.name: p.read_bytes() for p in bundle.glob("*.pt")}
    cmd = [
        sys.executable,
        "-m",
        "dicomnode.cli",
        "train",
        "cxr",
        "--data",
        "phantom:count=8,seed=3,slices=12,size=48,mix=0:1:0:1",
    ]
    cmd += ["--out", str(bundle), "--epochs", "2", "--batch-size", "4", "--widths", "4,8,8,16", "--input-size", "32"]
    cmd += ["--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "cxr: 2 epoch(s)" in out.stdout
    card = json.loads(card_path.read_text())
    assert card["metrics"] == {"measured_by": "kept"}  # the CT's figures stay
    assert card["operating_points"] == {"covid19_vs_cap": 0.4}
    assert "evaluations" not in card["cxr"] and card["cxr"]["classes"] == ["covid19", "cap"]
    entry = card["models"]["cxr"]
    assert entry["architecture"]["classes"] == ["covid19", "cap"] and entry["architecture"]["in_channels"] == 2
    assert entry["training"]["trained_on_synthetic_data"] is True and card["trained_on_synthetic_data"] is True
    assert "dicomnode train cxr" in entry["training"]["command"]
    assert {p.name: p.read_bytes() for p in bundle.glob("*.pt") if p.name != "cxr.pt"} == before
    from pipeline.models import load_bundle

    loaded = load_bundle(bundle, "cpu")
    assert loaded.cxr is not None
    # A class set without its cases in the data is refused in plain words.
    bad = cmd[:]
    bad[bad.index("--data") + 1] = "phantom:count=4,seed=3,slices=12,size=48,mix=1:0:0:1"
    out = subprocess.run(bad, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 2 and "no case of cap" in out.stderr


def test_train_cxr_fits_its_training_phantoms(tmp_path):
    """The loop learns: a small net fits the COVID-19 and CAP localizers it was trained on
    (a broken loss, label order or input would leave it at chance). How well the model
    generalises is measured by ``dicomnode evaluate`` (the shipped card), not here."""
    from pipeline.datasets import case_localizer, open_dataset
    from pipeline.metrics import roc_auc
    from pipeline.training.cxr import CxrTrainSettings, train_cxr

    spec = "phantom:count=16,seed=51,slices=16,size=48,mix=0:1:0:1"
    arch = cxr_arch(block_inplanes=(4, 8, 8, 16), input_size=32)
    settings = CxrTrainSettings(
        (spec,), tmp_path / "b", arch, epochs=150, batch_size=4, lr=5e-3, val_fraction=0.0, threads=1
    )
    training = train_cxr(settings)
    assert training["history"][-1]["train_loss"] < training["history"][0]["train_loss"] - 0.1
    net = build_network(arch)
    net.load_state_dict(torch.load(tmp_path / "b" / "cxr.pt", weights_only=True))
    net.eval()
    scores, truth = [], []
    for case in open_dataset(spec):
        p = classify_radiograph(case_localizer(case, case.load()), net, arch["classes"], 32)
        scores.append(p["covid19"])
        truth.append(case.label == "covid19")
    assert roc_auc(np.array(truth), np.array(scores)) > 0.8


def test_evaluate_compares_ct_cxr_and_fused_with_intervals(tmp_path):
    from pipeline.evaluate import evaluate_bundle
    from pipeline.figures import EvaluationMetrics
    from pipeline.params import ChainParams

    bundle = make_tiny_bundle(tmp_path / "b", with_cxr=True)
    out = tmp_path / "report"
    m = evaluate_bundle(
        bundle,
        "phantom:count=8,seed=61,slices=16,size=64",
        ChainParams(device="cpu"),
        out,
        n_bootstrap=30,
        progress=False,
    )
    assert m.cxr is not None
    c = m.cxr
    assert c.classes == ("covid19", "cap") and c.positive == "covid19" and c.n_cases == 4 and c.n_positive == 2
    for block in (c.ct, c.cxr, c.fused):
        assert block.auc.value is not None and 0.0 <= block.auc.value <= 1.0
        assert (
            block.accuracy.ci_low is not None
            and block.accuracy.ci_low <= block.accuracy.value <= block.accuracy.ci_high
        )
    assert c.fused_cases + sum(c.not_fused.values()) == c.n_cases
    data = json.loads((out / "metrics.json").read_text())
    assert EvaluationMetrics.from_json(data).to_json() == data
    assert "## CXR branch: CT alone, CXR alone, fused" in (out / "report.md").read_text()
    rows = (out / "cxr_scores.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,truth,ct_covid19,ct_cap,cxr_covid19,cxr_cap,fused_covid19,fused_cap")
    assert len(rows) == 1 + 8  # every case has a localizer; the comparison uses the 4 of its classes
    # Without a CXR model there is no such section.
    plain = evaluate_bundle(
        make_tiny_bundle(tmp_path / "p"),
        "phantom:count=4,seed=61,slices=16,size=64",
        ChainParams(device="cpu"),
        tmp_path / "r2",
        n_bootstrap=0,
        progress=False,
    )
    assert plain.cxr is None and not (tmp_path / "r2" / "cxr_scores.csv").exists()
