"""Interpretation (METHOD.md, module 5): Guided Grad-CAM and attentional regions.

Guided Grad-CAM of a slice = MONAI ``GradCAM`` on the classifier's last stage (upsampled
to the input, divided by its maximum: MONAI's default post-processing would flip it)
times MONAI ``GuidedBackpropGrad`` (the input gradient with negative gradients stopped at
every ReLU), for the explained class. The guided gradient is taken with respect to the CT
slice itself (its HU, cropped to the lung box), through the lung masking and windowing of
``pipeline.preprocess.lung_channels``, not with respect to the network's three input
channels: those are the mask and the masked HU, and a gradient on a pixel the mask set to
zero, or on the mask channel, says how the output would change if the lung had another
outline, not what in the CT the network read. Outside the lung the CT does not reach the
network, so its gradient there is zero; what heat lies outside comes from the smoothing
below and the resampling back to the slice. The product is smoothed a
little (``attention_sigma_px``: guided gradients are pixel noise otherwise, and the
regions are meant to be lesions, not pixels), normalised to [0, 1] and mapped from the
224 x 224 lung-box crop back onto the full slice.

The map is then confined to the lung mask (the paper keeps attention "inside the lung
margin"; the overlay shows the lung itself) and scaled to [0, 1] again; the share of the raw map that lay
inside the lung is kept (``AttentionMap.raw_inside_lung``) so evaluation can say where
the network really looked, not only what the overlay shows.

Attentional regions: the map binarised at ``attention_threshold``, opened then closed
with a disk of ``attention_morph_radius_px``, kept inside the lung mask dilated by
``lung_margin_px`` (counted on a 512-pixel slice, like the minimum area), components
smaller than ``attention_min_area_px`` (counted on a 512 x 512 slice, scaled by area like
``min_lung_pixels``) dropped.

Both MONAI tools change the network they work on (GradCAM registers hooks it never
removes; guided backprop swaps ReLUs while it runs), so they work on a private copy of
the classifier made once per classifier and process (again if its weights change), and
one explanation at a time runs on each copy. MONAI's ResNet names its activations ``act``, which guided backprop's
name match ("relu") would miss: in the copy every ReLU is wrapped as a child named
``relu``.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from monai.visualize import GradCAM, GuidedBackpropGrad
from scipy import ndimage

from .params import ChainParams
from .preprocess import REFERENCE_MATRIX_PX, lung_boxes, lung_channels, pair_batch, uncrop
from .types import (
    CLASS_NAMES,
    AttentionMap,
    CaseScores,
    CTVolume,
    InfectedSlices,
    InvalidInputError,
    LungMask,
    SliceScores,
)


def _scale_to_unit(cam: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (Grad-CAM is >= 0 after its ReLU), 0 if all zero.

    Replaces MONAI's default post-processing, which maps (min, max) to (1, 0), i.e.
    turns the map upside down for display.
    """
    top = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / top.view(-1, *([1] * (cam.dim() - 1)))


class _FromCT(torch.nn.Module):
    """The classifier as a function of the cropped CT: (n, 2, S, S) [HU, mask] pairs in,
    logits out; the masking and windowing are part of the graph, so the input gradient
    is the CT's."""

    def __init__(self, net: torch.nn.Module, params: ChainParams) -> None:
        super().__init__()
        self.net = net
        self.params = params

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.net(lung_channels(pairs, self.params))


class _Explainer:
    """A private, hook-carrying copy of one classifier with its MONAI explainers."""

    def __init__(self, classifier: torch.nn.Module, layer: str, params: ChainParams) -> None:
        net = copy.deepcopy(classifier).eval()
        for p in net.parameters():
            p.requires_grad_(False)  # only the input gradient is wanted
        _wrap_relus(net)
        if layer not in dict(net.named_modules()):
            raise InvalidInputError(
                f"the classifier has no layer {layer!r} for Grad-CAM; "
                f"set ChainParams.gradcam_layer to one of its stages"
            )
        self.net = _FromCT(net, params)
        self.cam = GradCAM(nn_module=self.net, target_layers=f"net.{layer}", postprocessing=_scale_to_unit)
        self.guided = GuidedBackpropGrad(self.net)
        self.lock = threading.Lock()

    def guided_gradcam(self, pairs: np.ndarray, class_index: int) -> np.ndarray:
        """(n, S, S) Guided Grad-CAM of (n, 2, S, S) [HU, mask] crops for ``class_index``
        (Grad-CAM scaled to [0, 1] per slice times the magnitude of the guided gradient
        with respect to the HU)."""
        dev = next(self.net.parameters()).device
        with self.lock, torch.inference_mode(False), torch.enable_grad():
            t = torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.float32)).to(dev)
            # Grad-CAM takes the batch at once; MONAI's guided backprop one slice at a time.
            cam = self.cam(x=t.clone().requires_grad_(True), class_idx=class_index)
            grad = torch.cat([self.guided(t[i : i + 1].clone(), index=class_index) for i in range(len(t))])
            ggc = grad[:, :1].abs() * cam
        return ggc[:, 0].detach().float().cpu().numpy()


def _wrap_relus(net: torch.nn.Module) -> None:
    """Wrap every ReLU whose name lacks "relu" as ``Sequential(relu=ReLU)``, not in place."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                plain = torch.nn.ReLU(inplace=False)
                setattr(module, name, plain if "relu" in name else torch.nn.Sequential(OrderedDict(relu=plain)))


_explainers: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, _Explainer]]" = weakref.WeakKeyDictionary()
_explainers_lock = threading.Lock()


def _weights_version(net: torch.nn.Module) -> tuple:
    """Changes whenever a weight is changed in place (optimizer steps, load_state_dict),
    so a copy made before training went on is not used afterwards."""
    return tuple(t._version for t in (*net.parameters(), *net.buffers()))


def _explainer_for(classifier: torch.nn.Module, layer: str, params: ChainParams) -> _Explainer:
    version = (_weights_version(classifier), layer, params.hu_window, params.lung_detail_window)
    with _explainers_lock:
        cached = _explainers.get(classifier)
        if cached is None or cached[0] != version:
            cached = (version, _Explainer(classifier, layer, params))
            _explainers[classifier] = cached
        return cached[1]


# ----------------------------------------------------------------- which slices


def select_slices(
    case: CaseScores, slices: SliceScores, infected: InfectedSlices, params: ChainParams, decision: str | None = None
) -> tuple[str, list[int]]:
    """The class to explain and the slices that drive the decision.

    The class is the decision when it names one, else the 4-class label (an
    indeterminate case shows what the leading class looked at). Pneumonia decisions
    with located slices: the highest-scoring infectious slices. Otherwise the
    classified slices with the highest probability of that class. At most
    ``max_explained_slices``, returned in z order.
    """
    n = max(0, int(params.max_explained_slices))
    target = decision if decision in CLASS_NAMES else case.label
    if n == 0:
        return target, []
    if target != "non_pneumonia" and infected.z_indices:
        z = np.asarray(infected.z_indices, dtype=np.int64)
        ranked = z[np.argsort(-infected.scores[z], kind="stable")]
    else:
        col = CLASS_NAMES.index(target)
        ranked = slices.z_indices[np.argsort(-slices.probabilities[:, col], kind="stable")]
    return target, sorted(int(v) for v in ranked[:n])


# ------------------------------------------------------------------- heat maps


def attention_regions(heat: np.ndarray, lung_slice: np.ndarray, params: ChainParams) -> np.ndarray:
    """Attentional regions of one full-size heat map (see the module doc)."""
    heat = np.asarray(heat)
    binary = heat >= params.attention_threshold
    r = int(params.attention_morph_radius_px)
    if r > 0:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = (yy**2 + xx**2) <= r * r
        binary = ndimage.binary_opening(binary, structure=disk)
        binary = ndimage.binary_closing(binary, structure=disk)
    binary &= _lung_with_margin(lung_slice, params)
    labels, n = ndimage.label(binary)
    if n == 0:
        return binary
    min_area = params.attention_min_area_px * heat.size / float(REFERENCE_MATRIX_PX**2)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def _normalise(ggc: np.ndarray, sigma: float) -> np.ndarray:
    m = ndimage.gaussian_filter(ggc.astype(np.float32), sigma) if sigma > 0 else ggc.astype(np.float32)
    top = float(m.max())
    return (m / top).astype(np.float32) if top > 0 else np.zeros_like(m, dtype=np.float32)


def explain_slices(
    volume: CTVolume,
    lung_mask: LungMask,
    z_indices: Sequence[int],
    target_class: str,
    classifier: torch.nn.Module,
    params: ChainParams,
) -> tuple[AttentionMap, ...]:
    """Guided Grad-CAM and attentional regions of the listed slices for ``target_class``."""
    if target_class not in CLASS_NAMES:
        raise InvalidInputError(f"unknown class {target_class!r}; expected one of {CLASS_NAMES}")
    z_list = [int(z) for z in z_indices]
    if not z_list:
        return ()
    explainer = _explainer_for(classifier, params.gradcam_layer, params)
    class_index = CLASS_NAMES.index(target_class)
    inputs = pair_batch(volume, lung_mask, z_list, params.input_size)
    boxes = lung_boxes(lung_mask, z_list)
    shape_yx = volume.shape[1:]
    ggc = explainer.guided_gradcam(inputs, class_index)
    maps = []
    for z, g, box in zip(z_list, ggc, boxes, strict=True):
        # The same smoothing relative to the lung box whatever the network's input size.
        small = _normalise(g, params.attention_sigma_px * params.input_size / 224.0)
        raw = np.clip(uncrop(small, box, shape_yx), 0.0, 1.0)
        lung = lung_mask.mask[z]
        total = float(raw.sum())
        inside = float(raw[lung].sum()) / total if total > 0 else float("nan")
        heat = confine_to_lung(raw, lung, params)
        regions = attention_regions(heat, lung, params)
        maps.append(
            AttentionMap(z_index=z, heat=heat, regions=regions, target_class=target_class, raw_inside_lung=inside)
        )
    return tuple(maps)


def _lung_with_margin(lung_slice: np.ndarray, params: ChainParams) -> np.ndarray:
    """The lung dilated by ``lung_margin_px`` (counted on a 512-pixel slice, scaled to this
    one's width, at least 1 pixel when the margin is not 0)."""
    lung = np.asarray(lung_slice, dtype=bool)
    if params.lung_margin_px <= 0:
        return lung
    margin = max(1, int(round(params.lung_margin_px * lung.shape[-1] / float(REFERENCE_MATRIX_PX))))
    return ndimage.binary_dilation(lung, iterations=margin)


def confine_to_lung(heat: np.ndarray, lung_slice: np.ndarray, params: ChainParams) -> np.ndarray:
    """The heat inside the lung mask, scaled to max 1 again.

    Not the margin: the mask's own edge is where a lung-only input changes most, so
    guided gradients pile up on the pleura, and a ring of even one pixel outside the
    lung held up to half the heat of an overlay. The radiologist is shown the lung."""
    out = np.where(np.asarray(lung_slice, dtype=bool), heat, 0.0).astype(np.float32)
    top = float(out.max())
    return out / top if top > 0 else out
