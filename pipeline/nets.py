"""Network architectures, built from the plain dicts stored in model cards.

An architecture dict is data, so a bundle can say exactly what it holds and a loader can
rebuild it without code per bundle. MONAI provides the networks.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from monai.networks.nets import BasicUNet, ResNet

from .types import ModelBundleError

#: The paper's backbone: ResNet152 = bottleneck blocks [3, 8, 36, 3].
RESNET152 = {"kind": "resnet", "block": "bottleneck", "layers": [3, 8, 36, 3], "block_inplanes": [64, 128, 256, 512]}
#: The paper code's U-Net: channels 64-128-256-512-512, bilinear upsampling.
UNET_PAPER = {"kind": "unet", "features": [64, 128, 256, 512, 512, 64], "upsample": "nontrainable"}


def classifier_arch(
    num_classes: int, layers=(1, 1, 1, 1), block: str = "basic", block_inplanes=(16, 32, 64, 128), input_size: int = 224
) -> dict[str, Any]:
    """Architecture dict of a 2-D ResNet slice classifier on the lung-only input of
    pipeline.preprocess.lung_channels."""
    return {
        "kind": "resnet",
        "block": block,
        "layers": list(layers),
        "block_inplanes": list(block_inplanes),
        "in_channels": 3,
        "num_classes": int(num_classes),
        "input_size": int(input_size),
    }


def cxr_arch(
    classes=("covid19", "cap"),
    layers=(1, 1, 1, 1),
    block: str = "basic",
    block_inplanes=(8, 16, 32, 64),
    input_size: int = 128,
) -> dict[str, Any]:
    """Architecture dict of the CXR classifier (pipeline.cxr): a 2-D ResNet on two channels
    (the standardised radiograph and its detail, pipeline.cxr.cxr_channels), one output
    per class of ``classes`` (in that order)."""
    return {
        "kind": "resnet",
        "block": block,
        "layers": list(layers),
        "block_inplanes": list(block_inplanes),
        "in_channels": 2,
        "num_classes": len(tuple(classes)),
        "classes": list(classes),
        "input_size": int(input_size),
    }


#: U-Net output classes: background, aerated lung and (3-class U-Nets) lung with a lesion
#: of infection. The lung mask is classes 1 + 2; class 2 alone is the lesion map.
UNET_LUNG, UNET_LESION = 1, 2


def unet_arch(
    features=(8, 16, 32, 64, 64, 8), upsample: str = "nontrainable", input_size: int = 128, lesion_head: bool = True
) -> dict[str, Any]:
    """Architecture dict of the 2-D lung U-Net: 1 HU channel in; 3 classes out
    (background, lung, lesion of infection) with ``lesion_head``, else 2 (background, lung)."""
    return {
        "kind": "unet",
        "features": list(features),
        "upsample": upsample,
        "in_channels": 1,
        "num_classes": 3 if lesion_head else 2,
        "input_size": int(input_size),
    }


def unet_has_lesion_head(arch: Mapping[str, Any] | None) -> bool:
    """Whether a U-Net architecture dict outputs a lesion class."""
    return arch is not None and int(arch.get("num_classes", 2)) > UNET_LESION


def build_network(arch: Mapping[str, Any]) -> torch.nn.Module:
    """Build an untrained network from an architecture dict."""
    kind = arch.get("kind")
    if kind == "resnet":
        return ResNet(
            block=arch.get("block", "basic"),
            layers=list(arch["layers"]),
            block_inplanes=list(arch["block_inplanes"]),
            spatial_dims=2,
            n_input_channels=int(arch.get("in_channels", 3)),
            num_classes=int(arch["num_classes"]),
            conv1_t_stride=2,
        )
    if kind == "unet":
        return BasicUNet(
            spatial_dims=2,
            in_channels=int(arch.get("in_channels", 1)),
            out_channels=int(arch.get("num_classes", 2)),
            features=tuple(arch["features"]),
            upsample=arch.get("upsample", "nontrainable"),
        )
    raise ModelBundleError(f"unknown architecture kind {kind!r} (expected 'resnet' or 'unet')")
