"""Training: tiny phantom sets, tiny networks, 1-2 epochs each (CPU, well under a minute).

Checks that each role writes a loadable bundle with an honest card, that a resumed run
ends with exactly the weights of an uninterrupted one, that training inputs are the
chain's own preprocessing, and that bad input ends with a clear error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.commands import train as train_cmd
from pipeline.datasets import open_dataset
from pipeline.models import SYNTHETIC_DISCLAIMER, load_bundle
from pipeline.params import ChainParams
from pipeline.preprocess import classifier_batch, lung_channels, lung_slice_indices, pair_batch
from pipeline.training import AugmentParams, TrainError
from pipeline.training.augment import augment_images, augment_pairs, random_erase
from pipeline.training.data import prepare_case, recipe_for
from pipeline.training.params import TrainParams
from pipeline.training.sampling import balanced_order, derived_seed, generator_for
from pipeline.types import CLASS_NAMES

from conftest import dicomnode_exe

SPEC = "phantom:count=8,seed=1000,slices=16,size=64"
SPEC2 = "phantom:count=4,seed=1001,slices=16,size=80"
COVID_SPEC = "phantom:count=4,seed=2000,mix=0:0:0:1,slices=16,size=64"
TINY = {
    "segmentation": ["--features", "4,8,8,16,16,4", "--input-size", "64", "--max-slices-per-case", "6"],
    "classifier": ["--widths", "4,8,16,32", "--input-size", "64", "--max-slices-per-case", "6"],
    "locator": ["--widths", "4,8,16,32", "--input-size", "64"],
}
#: The phantoms' own lung masks: a 1-epoch tiny U-Net's masks would be noise.
DATASET_MASKS = ("--lung-masks", "dataset")


def run_train(
    role: str, out: Path, *extra: str, data: str | None = None, epochs: int = 1, extra_data: tuple[str, ...] = ()
) -> int:
    """``dicomnode train`` in this process (the CLI's own parser and run)."""
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    data = data or (COVID_SPEC if role == "locator" else SPEC)
    more = [a for d in extra_data for a in ("--data", d)]
    args = parser.parse_args(
        [
            role,
            "--data",
            data,
            *more,
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--seed",
            "7",
            "--threads",
            "1",
            "--val-fraction",
            "0.5",
            "--no-progress",
            *TINY[role],
            *(DATASET_MASKS if role != "segmentation" and "--lung-masks" not in extra else ()),
            *extra,
        ]
    )
    return train_cmd.run(args)


def test_each_role_trains_into_one_loadable_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert run_train("segmentation", out) == 0
    assert run_train("classifier", out, extra_data=(SPEC2,)) == 0  # two data sets, trained on together
    assert run_train("locator", out) == 0
    bundle = load_bundle(out, device="cpu")  # checks every sha256 and rebuilds each network
    assert bundle.segmentation is not None
    card = bundle.card  # typed once when read (pipeline.card.ModelCard)
    assert card.trained_on_synthetic_data is True
    assert card.disclaimer == SYNTHETIC_DISCLAIMER
    monitors = {"segmentation": "val_dice", "classifier": "val_case_macro_auc", "locator": "val_auc"}
    for role, monitor in monitors.items():
        entry = card.models[role]
        t = entry.training
        specs = {"segmentation": [SPEC], "classifier": [SPEC, SPEC2], "locator": [COVID_SPEC]}[role]
        assert [d["spec"] for d in t["data"]] == t["data_specs"] == specs
        assert t["command"].startswith(f"dicomnode train {role} --data ")
        assert t["command"].count("--data ") == len(specs)
        assert t["epochs"] == 1 and t["seed"] == 7
        assert t["cases"]["validation"] > 0 and monitor in t["validation"]
        assert entry.architecture["input_size"] == 64 and entry.input_size == 64
        lines = (out / f"train_{role}.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [1]
        assert (out / "checkpoints" / role / "last.pt").is_file()
    assert 0.0 <= card.models["segmentation"].training["validation"]["val_dice"] <= 1.0
    assert bundle.classifier(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    assert bundle.locator(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    # Training one role again keeps the others' weights untouched.
    before = {r: card.models[r].sha256 for r in ("segmentation", "classifier")}
    assert run_train("locator", out, "--lr", "0.002") == 0
    after = json.loads((out / "model_card.json").read_text())
    assert {r: after["models"][r]["sha256"] for r in before} == before
    assert after["models"]["locator"]["training"]["lr"] == 0.002


@pytest.mark.parametrize("role", ["classifier", "segmentation"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path, role: str) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(role, straight, epochs=2) == 0
    assert run_train(role, resumed, epochs=1) == 0  # "interrupted" after epoch 1
    assert run_train(role, resumed, "--resume", epochs=2) == 0
    a = torch.load(straight / f"{role}.pt", weights_only=True)
    b = torch.load(resumed / f"{role}.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # ... and a different seed gives different weights (the check above can fail).
    other = tmp_path / "other"
    assert run_train(role, other, "--seed", "8", epochs=1) == 0
    c = torch.load(other / f"{role}.pt", weights_only=True)
    assert any(not torch.equal(c[k], b[k]) for k in c)
    log = [json.loads(x) for x in (resumed / f"train_{role}.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    entry = json.loads((resumed / "model_card.json").read_text())["models"][role]["training"]
    assert entry["resumed_after_epoch"] == 1 and len(entry["history"]) == 2


def test_chain_masks_come_from_the_bundles_unet(tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert run_train("locator", out, "--lung-masks", "chain") == 0  # no U-Net yet: classical
    card = json.loads((out / "model_card.json").read_text())
    assert card["models"]["locator"]["training"]["lung_mask_source"] == ["classical"]
    # A U-Net trained on the phantoms' masks, 3 epochs at 64 px: good enough to find lungs.
    assert run_train("segmentation", out, "--lr", "0.01", epochs=3) == 0
    assert run_train("locator", out, "--lung-masks", "chain") == 0
    card = json.loads((out / "model_card.json").read_text())
    t = card["models"]["locator"]["training"]
    assert t["lung_mask_source"] == ["unet"]
    assert t["lung_mask_unet_sha256"] == card["models"]["segmentation"]["sha256"]
    assert "--lung-masks chain" in t["command"]


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    assert run_train("locator", out, "--resume") == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert run_train("locator", out) == 0
    assert run_train("locator", out, "--resume", "--lr", "0.01", epochs=2) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr" in err


def test_bad_spec_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [dicomnode_exe(), "train", "classifier", "--data", "phantom:count=many", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "count='many'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b" / "model_card.json").exists()


def test_locator_needs_pneumonia_cases(tmp_path: Path, capsys) -> None:
    healthy = "phantom:count=3,seed=5,mix=1:0:0:0,slices=16,size=64"
    assert run_train("locator", tmp_path / "b", data=healthy) == 2
    assert "no pneumonia case" in capsys.readouterr().err


def test_slices_are_the_chains_inputs_with_lesion_labels() -> None:
    covid = next(c for c in open_dataset("phantom:count=4,seed=3,slices=16,size=64") if c.label == "covid19")
    volume, lung, lesion, _ = covid.load()
    arch = {"input_size": 64}
    params = ChainParams()
    cls = prepare_case(covid, recipe_for("classifier", arch, params, TrainParams(), None))
    z = lung_slice_indices(lung, params)
    np.testing.assert_array_equal(cls.z_indices, z)
    pairs = pair_batch(volume, lung, z, 64)
    np.testing.assert_array_equal(cls.inputs, pairs.astype(np.float16))
    # The network input the loop makes from the stored pairs is the chain's own input.
    np.testing.assert_allclose(
        lung_channels(pairs, ChainParams(input_size=64)),
        classifier_batch(volume, lung, z, ChainParams(input_size=64)),
        atol=1e-6,
    )
    infected = np.count_nonzero(lesion.reshape(len(lesion), -1), axis=1)[z] > 50
    covid_i, non_i = CLASS_NAMES.index("covid19"), CLASS_NAMES.index("non_pneumonia")
    # Lesion labels: a slice of the COVID-19 scan is COVID-19 only where it has lesions.
    np.testing.assert_array_equal(cls.targets, np.where(infected, covid_i, non_i))
    weak = prepare_case(covid, recipe_for("classifier", arch, params, TrainParams(slice_labels="case"), None))
    assert set(weak.targets.tolist()) == {covid_i}  # weak labels: every lung slice takes the scan's label
    loc = prepare_case(covid, recipe_for("locator", arch, params, TrainParams(), None))
    np.testing.assert_array_equal(loc.targets, infected.astype(np.int64))
    assert 0 < loc.targets.sum() < len(loc.targets)


def test_balanced_order_sees_every_class_equally_often() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 9 + [3] * 1)
    order = balanced_order(labels, 40000, generator_for(1, "t"))
    share = np.bincount(labels[order], minlength=4) / len(order)
    np.testing.assert_allclose(share, 0.25, atol=0.02)
    np.testing.assert_array_equal(order, balanced_order(labels, 40000, generator_for(1, "t")))
    assert derived_seed(1, "a", 0) != derived_seed(1, "a", 1) != derived_seed(2, "a", 1)


def test_augmentation_is_seeded_small_and_keeps_labels() -> None:
    x = torch.rand(6, 3, 32, 32)
    p = AugmentParams()
    a = augment_images(x, p, generator_for(3, "aug"))
    b = augment_images(x, p, generator_for(3, "aug"))
    c = augment_images(x, p, generator_for(4, "aug"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape
    erased = random_erase(torch.ones(200, 1, 20, 20), AugmentParams(erase_probability=0.5), generator_for(0))
    blanked = (erased == 0).flatten(1).any(1).float().mean()
    assert 0.35 < float(blanked) < 0.65
    img = torch.zeros(4, 1, 32, 32)
    mask = torch.zeros(4, 32, 32, dtype=torch.uint8)
    mask[:, 8:24, 8:24] = 1
    img[:, :, 8:24, 8:24] = 1.0
    wi, wm = augment_pairs(img, mask, p, generator_for(5))
    assert wm.dtype == torch.uint8 and set(wm.unique().tolist()) <= {0, 1}
    assert abs(int(wm.sum()) - int(mask.sum())) < 0.3 * int(mask.sum())  # small transforms
    assert ((wi[:, 0] > 0.5) == (wm > 0)).float().mean() > 0.97  # image and mask move together


def test_settings_are_checked() -> None:
    from pipeline.training import TrainSettings

    with pytest.raises(TrainError, match="--epochs"):
        TrainSettings(role="classifier", data_specs=(SPEC,), out_dir=Path("x"), architecture={}, epochs=0)


def test_overlay_heat_of_a_small_trained_model_lies_inside_the_lung(tmp_path: Path) -> None:
    """The classifier sees only the lung and its overlays are confined to the lung margin:
    at least 80% of each overlay's heat lies inside the lung mask itself."""
    from pipeline.chain import analyze
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    out = tmp_path / "bundle"
    assert run_train("classifier", out, epochs=2) == 0
    assert run_train("locator", out) == 0
    bundle = load_bundle(out, device="cpu")
    raw = []
    for label, seed in (("covid19", 31), ("cap", 32)):
        p = make_phantom(label, seed, 16, 64)
        result = analyze(p.volume, bundle, ChainParams(device="cpu", compute_phenotype=False, input_size=64))
        assert result.attention, label
        for att in result.attention:
            lung = result.lung_mask.mask[att.z_index]
            assert att.heat.sum() > 0
            assert att.heat[lung].sum() / att.heat.sum() >= 0.8, (label, att.z_index)
            raw.append(att.raw_inside_lung)
    # Where the network looked, before confinement: the guided gradient is the CT's, through
    # the lung masking, so only the smoothing and the resampling of a 64-pixel slice's lung
    # box put heat outside the lung (most at its thin top and bottom slices).
    assert np.mean(raw) >= 0.8 and min(raw) >= 0.6, raw


def test_segmentation_slices_favour_lesions_and_cover_the_scan():
    from pipeline.training.data import segmentation_slices

    lesion = np.zeros((40, 8, 8), dtype=bool)
    lesion[30:34] = True  # four slices with a lesion, far from the evenly spaced picks
    z = segmentation_slices(40, lesion, 6, 0.5, min_pixels=10)
    assert len(z) == 6 and list(z) == sorted(set(z))
    assert len(set(z) & set(range(30, 34))) >= 3  # half of the picks among the lesion slices
    assert z[0] == 0 and z.max() >= 39 - 1  # and the rest still spans the scan
    assert list(segmentation_slices(40, None, 6, 0.5, 10)) == [0, 8, 16, 23, 31, 39]
    assert len(segmentation_slices(40, lesion, None, 0.5, 10)) == 40
    assert len(segmentation_slices(4, lesion[:4], 6, 0.5, 10)) == 4
