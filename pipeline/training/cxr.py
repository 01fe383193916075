"""``dicomnode train cxr``: the CXR classifier of the localizer (pipeline.cxr).

The cases of the data sets whose label is one of the model's classes are read, each
case's localizer made (``pipeline.datasets.case_localizer``: a phantom's projection;
data sets without localizers cannot train it), split by patient into training and
validation, and a small MONAI ResNet (``pipeline.nets.cxr_arch``) is trained with
class-balanced cross-entropy, Adam and a cosine schedule, on inputs shifted by a few
pixels and with a little noise added (the scout's position and dose vary). The
validation figures of every epoch are recorded; the last epoch's weights are kept.

The network goes into the bundle as role ``cxr`` next to the CT's networks, which are
untouched: the CT's metrics, operating points and domain reference stay valid (the CXR
model does not change what the CT chain computes); only the card's CXR figures
(``cxr.evaluations``), measured on the previous CXR weights, are dropped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..cxr import FUSION_RULE, check_classes, cxr_channels, radiograph_input
from ..datasets import case_localizer, open_dataset, patient_split
from ..metrics import roc_auc
from ..models import CARD_FILE, SYNTHETIC_DISCLAIMER, write_bundle
from ..nets import build_network
from .bundle import DEFAULT_VERSION, RESEARCH_DISCLAIMER, bundle_lock, read_existing_card
from .checkpoint import TrainError

log = logging.getLogger(__name__)

#: Augmentation of the training inputs: shift (a fraction of the input size, each axis),
#: noise (in units of the standardised image), a left-right mirror with this probability
#: (the classes do not depend on the side), and the optimiser's weight decay.
SHIFT_FRACTION, NOISE_SD, MIRROR_P, WEIGHT_DECAY = 0.05, 0.05, 0.5, 1e-4
#: The per-epoch figures, in the bundle folder beside the card (which keeps the last epoch).
HISTORY_FILE = "train_cxr.jsonl"


@dataclass(frozen=True)
class CxrTrainSettings:
    """One ``train cxr`` run (the CLI builds it)."""

    data_specs: tuple[str, ...]
    out_dir: Path
    architecture: dict[str, Any]
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-3
    device: str = "cpu"
    seed: int = 0
    val_fraction: float = 0.2
    threads: int | None = None
    command: str = ""
    name: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        check_classes(self.architecture.get("classes") or ())
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0 or not 0.0 <= self.val_fraction < 1.0:
            raise TrainError(
                f"train cxr: --epochs >= 1, --batch-size >= 2, --lr > 0 and 0 <= --val-fraction < 1 are needed, got "
                f"{self.epochs}, {self.batch_size}, {self.lr}, {self.val_fraction}"
            )


def _inputs(cases: Sequence[Any], classes: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) standardised localizers and their class indices."""
    images, labels = [], []
    for case in cases:
        radiograph = case_localizer(case, case.load())
        if radiograph is None:
            raise TrainError(
                f"case {case.case_id}: its data set has no localizer (only phantoms have one so far); "
                "train the CXR model on phantom data"
            )
        images.append(radiograph_input(radiograph, size))
        labels.append(classes.index(case.label))
    return np.stack(images).astype(np.float32), np.asarray(labels, dtype=np.int64)


def _cases(specs: Sequence[str], classes: Sequence[str]) -> tuple[list[Any], bool]:
    datasets = [open_dataset(spec) for spec in specs]
    cases = [c for d in datasets for c in d if c.label in classes]
    found = {c.label for c in cases}
    if found != set(classes):
        missing = ", ".join(c for c in classes if c not in found)
        raise TrainError(f"train cxr: the data hold no case of {missing}; the CXR model needs every one of its classes")
    return cases, all(bool(getattr(d, "synthetic", False)) for d in datasets)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shift = max(1, int(round(SHIFT_FRACTION * x.shape[-1])))
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    mirror = torch.rand(x.shape[0], generator=gen) < MIRROR_P
    x = torch.where(mirror[:, None, None, None], torch.flip(x, dims=(-1,)), x)
    return x + NOISE_SD * torch.randn(x.shape, generator=gen)


def _validate(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    if len(y) == 0:
        return {}
    net.eval()
    with torch.inference_mode():
        p = torch.softmax(net(cxr_channels(torch.from_numpy(x)[:, None])), dim=-1).numpy()
    out = {"val_accuracy": float(np.mean(p.argmax(1) == y)), "val_cases": float(len(y))}
    if n_classes == 2 and 0 < y.sum() < len(y):
        out["val_auc"] = float(roc_auc(y == 0, p[:, 0]))  # the first class (COVID-19) against the second
    return out


def _fit(settings: CxrTrainSettings, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> tuple:
    arch = settings.architecture
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    net = build_network(arch)
    n_classes = int(arch["num_classes"])
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    weight = torch.from_numpy(counts.sum() / (n_classes * np.maximum(counts, 1.0)))
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    history = []
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    for epoch in range(1, settings.epochs + 1):
        net.train()
        order = torch.randperm(len(yt), generator=gen)
        losses = []
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two
            inputs = cxr_channels(_augment(xt[idx], gen))
            loss = torch.nn.functional.cross_entropy(net(inputs), yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
        sched.step()
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), **_validate(net, xv, yv, n_classes)}
        history.append(row)
        log.info("train cxr: %s", json.dumps(row))
    return net.eval(), history


def train_cxr(settings: CxrTrainSettings) -> dict[str, Any]:
    """Train the CXR model and write it into the bundle; returns its card entry's training record."""
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    arch = settings.architecture
    classes = check_classes(arch["classes"])
    t0 = time.perf_counter()
    cases, synthetic = _cases(settings.data_specs, classes)
    if settings.val_fraction > 0:
        train_cases, val_cases = patient_split(cases, settings.val_fraction, settings.seed)
    else:
        train_cases, val_cases = list(cases), []
    size = int(arch["input_size"])
    x, y = _inputs(train_cases, classes, size)
    xv, yv = _inputs(val_cases, classes, size) if val_cases else (np.zeros((0, size, size), np.float32), np.zeros(0))
    net, history = _fit(settings, x, y, xv, yv.astype(np.int64))
    training = {
        "data_specs": list(settings.data_specs),
        "classes": list(classes),
        "n_train_cases": len(train_cases),
        "n_val_cases": len(val_cases),
        "class_counts": {c: int(sum(1 for k in cases if k.label == c)) for c in classes},
        "input": "the CT localizer (phantoms: pipeline.projection of the volume), padded square in mm, "
        f"resized to {size} px, standardised; channels: the image and its detail (pipeline.cxr.cxr_channels)",
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.seed,
        "device": settings.device,
        "augmentation": f"shift up to {SHIFT_FRACTION:.0%} of the size, Gaussian noise sd {NOISE_SD}, "
        f"left-right mirror p {MIRROR_P}",
        "optimiser": f"AdamW, weight decay {WEIGHT_DECAY:g}, cosine schedule",
        "validation": history[-1] if history else {},
        "history_file": HISTORY_FILE,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": settings.command,
        "trained_on_synthetic_data": synthetic,
    }
    write_history(settings.out_dir, history)
    add_cxr_to_bundle(settings.out_dir, net, arch, training, settings.name)
    return {**training, "history": history}


def write_history(bundle_dir: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Every epoch's figures, one JSON line each, as the other roles' ``train_<role>.jsonl``."""
    path = Path(bundle_dir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"role": "cxr", **row}) + "\n" for row in history))
    return path


def add_cxr_to_bundle(
    bundle_dir: Path, net: torch.nn.Module, arch: dict[str, Any], training: dict[str, Any], name: str | None = None
) -> Path:
    """Write ``cxr.pt`` and its card entry; every other role and section stays (module docstring)."""
    bundle_dir = Path(bundle_dir)
    with bundle_lock(bundle_dir):
        card = read_existing_card(bundle_dir)
        models = {r: dict(e) for r, e in dict(card.get("models", {})).items()}
        models["cxr"] = {"training": dict(training)}
        card["models"] = models
        card["name"] = name or card.get("name") or bundle_dir.resolve().name
        card.setdefault("version", DEFAULT_VERSION)
        synthetic = any(bool(e.get("training", {}).get("trained_on_synthetic_data")) for e in models.values())
        card["trained_on_synthetic_data"] = synthetic or bool(card.get("trained_on_synthetic_data"))
        card["disclaimer"] = SYNTHETIC_DISCLAIMER if card["trained_on_synthetic_data"] else RESEARCH_DISCLAIMER
        section = dict(card.get("cxr") or {})
        if section.pop("evaluations", None) is not None:
            log.warning("bundle %s: dropped the card's CXR figures (measured on the previous CXR weights)", bundle_dir)
        section["classes"] = list(arch["classes"])
        section["fusion_rule"] = FUSION_RULE
        card["cxr"] = section
        write_bundle(bundle_dir, {"cxr": net.cpu()}, {"cxr": arch}, card)
    return bundle_dir / CARD_FILE
