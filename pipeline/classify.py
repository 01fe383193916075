"""Slice classifier inference (METHOD.md, module 2): probabilities and deep features.

The classifier is a MONAI 2-D ResNet built from the bundle's architecture dict. Its
penultimate features (the global-average-pooled output of ``layer4``, the input of
``fc``) are computed by running the ResNet's own layers up to the pooling and then
``fc`` on them, so nothing is registered on the shared network (two analyses may use one
cached bundle at once). A network without that layout still gets probabilities, with
``features`` left None.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .params import ChainParams
from .preprocess import classifier_batch
from .types import CLASS_NAMES, CTVolume, InvalidInputError, LungMask, SliceScores

_RESNET_LAYERS = ("conv1", "bn1", "act", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


def _is_monai_resnet(net: torch.nn.Module) -> bool:
    return all(hasattr(net, name) for name in _RESNET_LAYERS) and getattr(net, "fc", None) is not None


def _forward_with_features(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and penultimate features of one batch (features None for other networks)."""
    if not _is_monai_resnet(net):
        return net(x), None
    resnet: Any = net  # MONAI's ResNet: its layers are attributes that nn.Module types as Tensor | Module
    h = resnet.act(resnet.bn1(resnet.conv1(x)))
    if not getattr(resnet, "no_max_pool", False):
        h = resnet.maxpool(h)
    h = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
    features = resnet.avgpool(h).flatten(1)
    return resnet.fc(features), features


def predict(
    net: torch.nn.Module,
    inputs: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    with_features: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities (n, classes) of an (n, 3, S, S) input stack, and optionally
    the penultimate features (n, f), in batches under ``torch.inference_mode``."""
    x_all = np.asarray(inputs, dtype=np.float32)
    if x_all.ndim != 4 or len(x_all) == 0:
        raise InvalidInputError(f"predict needs a non-empty (n, channels, y, x) stack, got shape {x_all.shape}")
    dev = torch.device(device)
    probs: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    step = max(1, int(batch_size))
    with torch.inference_mode():
        for start in range(0, len(x_all), step):
            x = torch.from_numpy(x_all[start : start + step]).to(dev)
            if with_features:
                logits, f = _forward_with_features(net, x)
            else:
                logits, f = net(x), None
            probs.append(F.softmax(logits.float(), dim=1).cpu().numpy())
            if f is not None:
                feats.append(f.float().cpu().numpy())
    features = np.concatenate(feats) if with_features and len(feats) == len(probs) else None
    return np.concatenate(probs).astype(np.float64), features


def classify_slices(
    volume: CTVolume,
    lung_mask: LungMask,
    z_indices: Sequence[int] | np.ndarray,
    classifier: torch.nn.Module,
    params: ChainParams,
    device: torch.device | str = "cpu",
) -> SliceScores:
    """Class probabilities (CLASS_NAMES order) and features of the listed slices."""
    z = np.asarray(sorted({int(i) for i in z_indices}), dtype=np.int64)
    if len(z) == 0:
        raise InvalidInputError("no slice to classify: the lung mask has no slice with enough lung")
    inputs = classifier_batch(volume, lung_mask, z, params)
    probs, features = predict(classifier, inputs, device, params.batch_size, with_features=True)
    if probs.shape[1] != len(CLASS_NAMES):
        raise InvalidInputError(
            f"the classifier has {probs.shape[1]} outputs; the chain needs "
            f"{len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)}): check the bundle"
        )
    return SliceScores(z_indices=z, probabilities=probs, features=features)


def case_features(scores: SliceScores) -> np.ndarray | None:
    """Case-level deep features: max-pool of the slices' penultimate features (t-SNE)."""
    if scores.features is None:
        return None
    return np.asarray(scores.features).max(axis=0)
