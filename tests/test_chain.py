"""The AI chain end to end with a tiny random-weight bundle, and its interpretation stages."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pipeline.chain import STAGES, analyze
from pipeline.explain import _explainer_for, attention_regions, explain_slices, select_slices
from pipeline.fusion import fuse
from pipeline.locate import infected_from_scores, smooth_scores
from pipeline.lung import segment_lungs
from pipeline.models import load_bundle
from pipeline.params import ChainParams
from pipeline.phantom import make_phantom
from pipeline.phenotype import compute_phenotype, contour, fractal_dimension, pleura_distances_mm
from pipeline.preprocess import lung_slice_indices
from pipeline.severity import LOBES
from pipeline.types import CLASS_NAMES, TASK_NAMES, AttentionMap, CTVolume, InvalidInputError, LungMask, SliceScores


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("covid19", 21, n_slices=24, size_px=96)


def test_analyze_end_to_end_on_a_phantom(bundle, phantom) -> None:
    params = ChainParams(max_slices=8, max_explained_slices=2)
    r = analyze(phantom.volume, bundle, params)
    nz = phantom.volume.shape[0]
    assert r.lung_mask.mask.shape == phantom.volume.shape
    assert len(r.slice_scores.z_indices) <= 8
    assert r.slice_scores.features is not None and len(r.slice_scores.features) == len(r.slice_scores.z_indices)
    np.testing.assert_allclose(r.slice_scores.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert r.case_scores.label in CLASS_NAMES
    assert r.infected.scores.shape == (nz,)
    scored = ~np.isnan(r.infected.scores)
    assert scored.sum() >= len(r.slice_scores.z_indices)  # every lung slice is located
    assert set(r.slice_scores.z_indices) <= set(np.flatnonzero(scored))
    assert 1 <= len(r.attention) <= 2
    for a in r.attention:
        assert a.heat.shape == phantom.volume.shape[1:] and a.target_class == r.case_scores.label
        assert 0.0 <= a.heat.min() and a.heat.max() <= 1.0
    assert set(STAGES) | {"total"} == set(r.timings_s)
    expected_ml = phantom.lung_mask.sum() * phantom.volume.voxel_volume_ml
    assert r.lung_volume_ml == pytest.approx(expected_ml, rel=0.1)
    assert r.model.name == "tiny-random-test" and r.model.sha256 == bundle.sha256
    summary = json.loads(json.dumps(r.summary(phantom.volume)))
    assert set(summary["probabilities"]) == set(CLASS_NAMES)
    assert set(summary["tasks"]) == set(TASK_NAMES)
    assert summary["infected_slices"] == [phantom.volume.slice_label(z) for z in r.infected.z_indices]
    if r.lung_mask.lesion is not None and r.decision.value != "out_of_domain":  # severity of its lesion map
        lesion_in_lung = np.count_nonzero(r.lung_mask.lesion & r.lung_mask.mask)
        assert (
            summary["lung_involvement_percent"]
            == pytest.approx(100 * lesion_in_lung / np.count_nonzero(r.lung_mask.mask), abs=0.01)
            or lesion_in_lung * phantom.volume.voxel_volume_ml < 0.1
        )
        assert summary["mosmed_grade"].startswith("CT-")
        assert [lobe["name"] for lobe in summary["lobes"]] == list(LOBES)  # the "lobes" stage's map
        assert 0 <= summary["ct_severity_score"] <= 25
    else:
        assert summary["lung_involvement_percent"] is None and summary["mosmed_grade"] is None


def test_analyze_is_deterministic(bundle, phantom) -> None:
    params = ChainParams(max_slices=6, max_explained_slices=1, compute_phenotype=False)
    a = analyze(phantom.volume, bundle, params)
    b = analyze(phantom.volume, bundle, params)
    np.testing.assert_allclose(a.slice_scores.probabilities, b.slice_scores.probabilities)
    np.testing.assert_array_equal(a.infected.scores, b.infected.scores)
    np.testing.assert_allclose(a.attention[0].heat, b.attention[0].heat, atol=1e-6)


def test_analyze_refuses_a_volume_without_lungs(bundle) -> None:
    hu = np.zeros((8, 64, 64), np.float32)  # water: nothing below the air threshold
    with pytest.raises(InvalidInputError, match="not a chest CT"):
        analyze(CTVolume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)), bundle, ChainParams())


def test_explaining_leaves_the_shared_classifier_untouched(bundle, phantom) -> None:
    lung = LungMask(phantom.lung_mask, "classical")
    before = {k: v.clone() for k, v in bundle.classifier.state_dict().items()}
    explain_slices(phantom.volume, lung, [10], "cap", bundle.classifier, ChainParams())
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in bundle.classifier.modules())
    assert hooks == 0
    for k, v in bundle.classifier.state_dict().items():
        assert (v == before[k]).all()


def test_select_slices_prefers_located_slices_for_pneumonia() -> None:
    params = ChainParams(max_explained_slices=2)
    probs = np.array([[0.1, 0.1, 0.1, 0.7], [0.1, 0.6, 0.1, 0.2], [0.1, 0.1, 0.1, 0.7], [0.7, 0.1, 0.1, 0.1]])
    slices = SliceScores(z_indices=np.array([2, 4, 6, 8]), probabilities=probs)
    case = fuse(probs, 3)
    assert case.label == "covid19"
    scores = np.full(10, np.nan)
    scores[[2, 3, 4, 5, 6, 8]] = [0.6, 0.9, 0.2, 0.8, 0.55, 0.1]
    infected = infected_from_scores(
        scores[[2, 3, 4, 5, 6, 8]], [2, 3, 4, 5, 6, 8], 10, ChainParams(locator_median_width=1)
    )
    assert infected.z_indices == (2, 3, 5, 6)
    # With a lesion map, a slice the locator flags without a lesion on it is not reported.
    lesion_slices = np.zeros(10, bool)
    lesion_slices[[3, 6, 8]] = True
    gated = infected_from_scores(
        scores[[2, 3, 4, 5, 6, 8]], [2, 3, 4, 5, 6, 8], 10, ChainParams(locator_median_width=1), lesion_slices
    )
    assert gated.z_indices == (3, 6)
    assert np.array_equal(gated.scores, infected.scores, equal_nan=True)  # the locator's scores are kept
    assert select_slices(case, slices, infected, params) == ("covid19", [3, 5])
    no_hits = infected_from_scores(np.zeros(4), [2, 4, 6, 8], 10, ChainParams())
    assert select_slices(case, slices, no_hits, params) == ("covid19", [2, 6])
    cap_case = fuse(probs[[1]], 3)
    assert cap_case.label == "cap"
    # A CAP decision with located slices shows the infectious slices too.
    assert select_slices(cap_case, slices, infected, params) == ("cap", [3, 5])
    # Without: highest CAP probability first (z=4), then the first of the tied ones (z=2).
    assert select_slices(cap_case, slices, no_hits, params) == ("cap", [2, 4])
    # The decision, not the argmax, names the class explained; indeterminate falls back.
    assert select_slices(case, slices, no_hits, params, "non_pneumonia")[0] == "non_pneumonia"
    assert select_slices(case, slices, no_hits, params, "indeterminate")[0] == "covid19"


def test_locator_median_filter_and_nan_for_unscored() -> None:
    np.testing.assert_allclose(smooth_scores(np.array([0.0, 0.0, 1.0, 0.0, 0.0]), 3), [0, 0, 0, 0, 0])
    raw = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.2, 0.1])
    inf = infected_from_scores(raw, [3, 4, 5, 6, 7, 8, 9], 12, ChainParams(locator_median_width=3))
    assert inf.z_indices == (3, 4, 5, 6, 7)  # the one-slice dip at z=5 is filled in
    assert np.isnan(inf.scores[[0, 1, 2, 10, 11]]).all()


def test_attention_regions_keep_inside_lung_margin_and_drop_small() -> None:
    params = ChainParams(
        attention_threshold=0.5, lung_margin_px=2, attention_min_area_px=200, attention_morph_radius_px=1
    )
    heat = np.zeros((128, 128), np.float32)
    heat[20:40, 20:40] = 1.0  # 400 px inside the lung: kept
    heat[100:103, 100:103] = 1.0  # 9 px (< 200 * 128^2 / 512^2 = 12.5): dropped
    heat[60:80, 110:128] = 1.0  # outside the lung margin: dropped
    lung = np.zeros((128, 128), bool)
    lung[10:105, 10:105] = True
    regions = attention_regions(heat, lung, params)
    # The opening with a radius-1 disk rounds off the square's four corners only.
    assert regions[21:39, 21:39].all()
    assert 390 <= regions.sum() <= 400 and regions[20:40, 20:40].sum() == regions.sum()


def test_phenotype_features_pleura_distance_and_fractal_dimension() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-600, 150, size=(3, 64, 64)).astype(np.float32)
    volume = CTVolume(hu=hu, spacing_mm=(5.0, 0.5, 0.5))
    lung = np.zeros(hu.shape, bool)
    lung[:, 10:50, 10:60] = True
    regions = np.zeros((64, 64), bool)
    regions[16:25, 26:35] = True  # centroid (20, 30): 11 px from the first non-lung row 9
    attention = (AttentionMap(z_index=1, heat=regions.astype(np.float32), regions=regions, target_class="covid19"),)
    ph = compute_phenotype(volume, LungMask(lung, "classical"), attention, ChainParams())
    assert ph is not None and ph.region_count == 1
    assert ph.features["pleura_distance_mm"] == pytest.approx(5.5)
    assert ph.features["original_firstorder_Mean"] == pytest.approx(float(hu[1][regions].mean()), rel=1e-3)
    assert any(k.startswith("original_glcm_") for k in ph.features)
    assert np.isfinite(ph.features["fractal_dimension_2d"])
    assert pleura_distances_mm(np.zeros((4, 4), bool), lung[0, :4, :4], (1.0, 1.0)) == []
    none = (
        AttentionMap(
            z_index=0, heat=np.zeros((64, 64), np.float32), regions=np.zeros((64, 64), bool), target_class="cap"
        ),
    )
    assert compute_phenotype(volume, LungMask(lung, "classical"), none, ChainParams()) is None


def test_fractal_dimension_of_a_line_and_an_area() -> None:
    square = np.ones((64, 64), bool)
    assert fractal_dimension(square) == pytest.approx(2.0, abs=0.05)
    assert fractal_dimension(contour(square)) == pytest.approx(1.0, abs=0.15)


def test_explainer_copy_follows_weight_changes(bundle) -> None:
    params = ChainParams()
    first = _explainer_for(bundle.classifier, "layer4", params)
    assert _explainer_for(bundle.classifier, "layer4", params) is first  # made once per classifier
    net = copy.deepcopy(bundle.classifier)
    old = _explainer_for(net, "layer4", params)
    with torch.no_grad():
        net.fc.bias.add_(1.0)  # as an optimizer step would
    new = _explainer_for(net, "layer4", params)
    assert new is not old and torch.equal(new.net.net.fc.bias, net.fc.bias)


def test_guided_gradient_is_the_cts_and_zero_outside_the_lung(bundle, phantom) -> None:
    """The guided gradient is taken with respect to the HU through the lung masking: a
    pixel the mask sets to zero does not reach the network and gets no gradient."""
    from pipeline.preprocess import pair_batch

    params = ChainParams()
    lung = segment_lungs(phantom.volume, params)
    z = [int(lung_slice_indices(lung, params)[len(lung_slice_indices(lung, params)) // 2])]
    pairs = torch.from_numpy(pair_batch(phantom.volume, lung, z, params.input_size))
    explainer = _explainer_for(bundle.classifier, "layer4", params)
    grad = explainer.guided(pairs.clone(), index=3)[:, 0]
    outside = pairs[:, 1] == 0
    assert outside.any() and (~outside).any()
    assert float(grad[outside].abs().max()) == 0.0
    assert float(grad[~outside].abs().max()) > 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is tested above)")
def test_cuda_gives_the_cpu_results(tiny_bundle, phantom) -> None:
    params = ChainParams(max_slices=8, max_explained_slices=2, compute_phenotype=False)
    cpu = analyze(phantom.volume, load_bundle(tiny_bundle, device="cpu"), params)
    gpu = analyze(phantom.volume, load_bundle(tiny_bundle, device="cuda"), params)
    np.testing.assert_array_equal(cpu.lung_mask.mask, gpu.lung_mask.mask)
    np.testing.assert_allclose(cpu.slice_scores.probabilities, gpu.slice_scores.probabilities, atol=1e-3)
    np.testing.assert_allclose(cpu.infected.scores, gpu.infected.scores, atol=1e-3)
    assert cpu.case_scores.label == gpu.case_scores.label
    for a, b in zip(cpu.attention, gpu.attention, strict=True):
        assert a.z_index == b.z_index
        np.testing.assert_allclose(a.heat, b.heat, atol=2e-2)


def test_first_order_fallback_without_pyradiomics() -> None:
    from pipeline.phenotype import first_order_numpy

    f = first_order_numpy(np.array([-100.0, 0.0, 100.0, 200.0]))
    assert f["original_firstorder_Mean"] == pytest.approx(50.0)
    assert f["original_firstorder_Variance"] == pytest.approx(12500.0)
    assert f["original_firstorder_Skewness"] == pytest.approx(0.0)
    assert first_order_numpy(np.array([])) == {}


def test_networks_get_the_input_size_their_architecture_names(tmp_path, phantom) -> None:
    """A bundle trained at 96 px is fed 96 px crops, whatever ChainParams' default says."""
    from conftest import make_tiny_bundle

    card_path = make_tiny_bundle(tmp_path) / "model_card.json"
    card = json.loads(card_path.read_text())
    for role in ("classifier", "locator"):
        card["models"][role]["architecture"]["input_size"] = 96
    card_path.write_text(json.dumps(card))
    models = load_bundle(tmp_path, device="cpu")
    seen: list[tuple[int, ...]] = []
    models.classifier.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    models.locator.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    analyze(phantom.volume, models, ChainParams(device="cpu", max_explained_slices=0, compute_phenotype=False))
    assert seen and set(seen) == {(96, 96)}


def test_the_model_card_is_read_once_into_typed_data(tmp_path):
    """Issue 14 item 5: the card is a ModelCard (pipeline.card), checked when read; the
    chain sizes each stage from its typed architecture."""
    import json

    from pipeline.card import ModelCard
    from pipeline.models import DEFAULT_BUNDLE_DIR, read_card
    from pipeline.types import ModelBundleError

    card = read_card(DEFAULT_BUNDLE_DIR)
    assert isinstance(card, ModelCard) and card.trained_on_synthetic_data
    assert card.models["segmentation"].input_size == card.architecture("segmentation")["input_size"]
    assert card.operating_points["locator_threshold"] == card.raw["operating_points"]["locator_threshold"]
    bad = json.loads((DEFAULT_BUNDLE_DIR / "model_card.json").read_text())
    del bad["models"]["locator"]
    with pytest.raises(ModelBundleError, match="lists no 'locator' model"):
        ModelCard.from_mapping(bad, "card.json")
    bad["models"]["locator"] = {"file": "locator.pt"}
    with pytest.raises(ModelBundleError, match="model 'locator' has no architecture table"):
        ModelCard.from_mapping(bad, "card.json")
    with pytest.raises(ModelBundleError, match="has no 'models' table"):
        ModelCard.from_mapping([], "card.json")
