"""The CXR branch (METHOD.md, module 7): a radiograph's own classifier and its fusion with the CT.

The paper reads the CT localizer (scout) as a chest x-ray with a CNN of its own (COVID-19
vs CAP) and averages its score with the CT's. Here:

* ``radiograph_input``: the radiograph padded to a square field (in millimetres, with the
  image's own air value, so the chest keeps its shape), resized to the network's input
  size and standardised (zero mean, unit variance: a localizer's attenuation units and a
  DX's stored values are on different scales);
* ``cxr_channels``: the network's two input channels, the standardised radiograph and
  its detail (the image minus its local mean over a quarter of the field, amplified):
  lesions are local excess attenuation on a background of body habitus, and on small
  synthetic cohorts the detail channel is what lets a small network learn them (held-out
  AUC 0.82 against 0.73 for the image alone in our runs);
* ``classify_radiograph``: the bundle's CXR network (``pipeline.nets.cxr_arch``, a small
  MONAI ResNet on those channels) -> probabilities over its classes (its card's
  ``classes``; the paper's ``("covid19", "cap")`` by default);
* ``ct_class_scores``: the CT's scores over the same classes, as its decision weighs
  them: for pneumonia types, the type shares the decision uses (the slice classifier
  blended with the lesion pattern model by the card's ``pattern_weight``,
  pipeline.decision), otherwise the multi-way probabilities; renormalised over the
  CXR model's classes;
* ``fuse``: the fusion rule. The fused score of each class both models know is the mean
  of the CXR's and the CT's renormalised scores (the paper's score-level averaging). It
  is made only when the CT decision is one of the CXR model's classes: an
  ``indeterminate`` or ``out_of_domain`` CT decision is a result the model cannot stand
  behind, and the radiograph does not override it (no fused score, the CXR's own score
  is still reported); a CT decision the CXR model does not know (non-pneumonia or
  influenza for the default classes) stands as it is. The fused decision is the fused
  score's top class, ``indeterminate`` when the top two lie within the card's margin.
  The report's own decision (its Impression) stays the CT's: the fused decision is stated
  beside it.
* ``analyze_radiograph``: the three together, with the CT result or without (a DX/CR
  film sent alone: the CXR's scores only, nothing fused).

Pure compute: the network is an argument, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .types import CLASS_NAMES, PNEUMONIA_CLASSES, AnalysisResult, CxrResult, InvalidInputError, Radiograph

__all__ = [
    "DEFAULT_CXR_CLASSES",
    "CxrParams",
    "analyze_radiograph",
    "classify_radiograph",
    "cxr_channels",
    "ct_class_scores",
    "fuse",
    "radiograph_input",
]

#: The paper's CXR classes.
DEFAULT_CXR_CLASSES: tuple[str, ...] = ("covid19", "cap")
#: Fusion rule, as the card and the reports name it.
FUSION_RULE = (
    "mean of the CXR model's and the CT's scores over the classes both know (each renormalised over those "
    "classes); made only when the CT decision is one of them, never over an indeterminate or out-of-domain CT"
)


#: The detail channel: local mean over this fraction of the input's width, and its gain.
DETAIL_WINDOW_FRACTION, DETAIL_GAIN = 0.25, 3.0


def cxr_channels(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) standardised radiographs -> (N, 2, H, W): the image and its detail."""
    k = int(round(DETAIL_WINDOW_FRACTION * x.shape[-1])) // 2 * 2 + 1
    local = torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    return torch.cat([x, DETAIL_GAIN * (x - local)], dim=1)


@dataclass(frozen=True)
class CxrParams:
    """The CXR branch's settings (the network's input size comes from its architecture)."""

    input_size: int = 128
    #: Fused scores closer than this are an indeterminate fused decision (the card's
    #: ``margin`` overrides it when the bundle is calibrated).
    margin: float = 0.10


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The CXR class set, checked: at least two distinct classes of CLASS_NAMES."""
    out = tuple(str(c) for c in classes)
    unknown = [c for c in out if c not in CLASS_NAMES]
    if unknown or len(out) < 2 or len(set(out)) != len(out):
        raise InvalidInputError(
            f"CXR classes must be two or more distinct classes of {', '.join(CLASS_NAMES)}, "
            f"got {', '.join(out) or 'none'}"
        )
    return out


def radiograph_input(radiograph: Radiograph, size: int) -> np.ndarray:
    """(size, size) float32: the radiograph on a square field in mm, resized, standardised."""
    img = radiograph.image.astype(np.float32)
    rows, cols = img.shape
    dr, dc = radiograph.pixel_spacing_mm
    h_mm, w_mm = rows * dr, cols * dc
    air = float(np.percentile(img, 1))
    if h_mm > w_mm:  # pad the columns
        extra = int(round((h_mm - w_mm) / dc))
        img = np.pad(img, ((0, 0), (extra // 2, extra - extra // 2)), constant_values=air)
    elif w_mm > h_mm:
        extra = int(round((w_mm - h_mm) / dr))
        img = np.pad(img, ((extra // 2, extra - extra // 2), (0, 0)), constant_values=air)
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = out[0, 0].numpy()
    sd = float(x.std())
    return ((x - float(x.mean())) / (sd if sd > 1e-6 else 1.0)).astype(np.float32)


def classify_radiograph(
    radiograph: Radiograph, net: torch.nn.Module, classes: Sequence[str], input_size: int, device: Any = "cpu"
) -> dict[str, float]:
    """The CXR network's probabilities over ``classes`` (its output order)."""
    classes = check_classes(classes)
    x = torch.from_numpy(radiograph_input(radiograph, input_size))[None, None]
    with torch.inference_mode():
        logits = net(cxr_channels(x).to(device))
    if logits.shape[-1] != len(classes):
        raise InvalidInputError(f"the CXR network has {logits.shape[-1]} outputs for {len(classes)} classes")
    p = torch.softmax(logits.float(), dim=-1)[0].cpu().numpy().astype(np.float64)
    p = p / p.sum()
    return {c: float(v) for c, v in zip(classes, p, strict=True)}


def _renormalised(scores: Mapping[str, float], classes: Sequence[str]) -> dict[str, float]:
    total = float(sum(max(0.0, float(scores[c])) for c in classes))
    if total <= 0:
        return {c: 1.0 / len(classes) for c in classes}
    return {c: max(0.0, float(scores[c])) / total for c in classes}


def ct_class_scores(result: AnalysisResult, classes: Sequence[str], pattern_weight: float = 0.0) -> dict[str, float]:
    """The CT's scores over ``classes`` as its decision weighs them (module docstring)."""
    from .decision import pneumonia_class_shares

    if set(classes) <= set(PNEUMONIA_CLASSES):
        shares = pneumonia_class_shares(result.case_scores, result.lesion_pattern, pattern_weight)
        return _renormalised(shares, classes)
    return _renormalised(result.case_scores.probabilities, classes)


def _fused_decision(fused: Mapping[str, float], classes: Sequence[str], margin: float) -> str:
    ranked = sorted(classes, key=lambda c: (-float(fused[c]), classes.index(c)))
    return "indeterminate" if float(fused[ranked[0]]) - float(fused[ranked[1]]) < margin else ranked[0]


def fuse(
    cxr: Mapping[str, float],
    classes: Sequence[str],
    result: AnalysisResult | None,
    pattern_weight: float = 0.0,
    margin: float = CxrParams.margin,
) -> tuple[dict[str, float] | None, dict[str, float] | None, str | None, str]:
    """(the CT's scores over ``classes``, fused scores, fused decision, reason) by the
    fusion rule (module docstring); the CT's scores are given whenever there is a CT."""
    classes = check_classes(classes)
    known = " vs ".join(classes)
    if result is None:
        return None, None, None, f"radiograph alone: the CXR model's scores ({known}), no CT to fuse with"
    ct = ct_class_scores(result, classes, pattern_weight)
    decision = result.decision.value
    if decision in ("indeterminate", "out_of_domain"):
        return (
            ct,
            None,
            None,
            f"not fused: the CT decision is {decision.replace('_', ' ')}, a result the model cannot stand behind; "
            "the radiograph does not override it",
        )
    if decision not in classes:
        return (
            ct,
            None,
            None,
            f"not fused: the CT decides {decision.replace('_', ' ')}, a class the CXR model does not tell "
            f"({known}); the CT decision stands",
        )
    cx = _renormalised(cxr, classes)
    fused = {c: 0.5 * (ct[c] + cx[c]) for c in classes}
    verdict = _fused_decision(fused, classes, margin)
    parts = ", ".join(f"{c} CT {100 * ct[c]:.1f}% / CXR {100 * cx[c]:.1f}%" for c in classes)
    return ct, fused, verdict, f"fused (mean of the CT's and the CXR's scores: {parts}): {verdict.replace('_', ' ')}"


def analyze_radiograph(
    radiograph: Radiograph,
    net: torch.nn.Module,
    arch: Mapping[str, Any],
    result: AnalysisResult | None = None,
    pattern_weight: float = 0.0,
    margin: float = CxrParams.margin,
    device: Any = "cpu",
    model_name: str = "cxr",
) -> CxrResult:
    """The CXR branch on one radiograph, fused with the CT ``result`` when there is one."""
    classes = check_classes(arch.get("classes") or DEFAULT_CXR_CLASSES)
    size = int(arch.get("input_size") or CxrParams.input_size)
    probs = classify_radiograph(radiograph, net, classes, size, device)
    ct, fused, verdict, reason = fuse(probs, classes, result, pattern_weight, margin)
    if result is not None and result.decision.value == "out_of_domain":
        ct = None  # no CT score is reported out of domain
    return CxrResult(
        classes=classes,
        probabilities=probs,
        ct=ct,
        radiograph=radiograph,
        fused=fused,
        fused_decision=verdict,
        reason=reason,
        model_name=model_name,
    )


def bundle_cxr(
    radiograph: Radiograph, bundle: Any, result: AnalysisResult | None = None, params: CxrParams = CxrParams()
) -> CxrResult | None:
    """``analyze_radiograph`` with a loaded ``pipeline.models.ModelBundle``'s CXR network,
    its card's pattern weight and margin; None when the bundle has no CXR model."""
    if getattr(bundle, "cxr", None) is None:
        return None
    op = bundle.operating_points
    calibrated = bool(bundle.card.operating_points)
    return analyze_radiograph(
        radiograph,
        bundle.cxr,
        bundle.arch("cxr"),
        result,
        pattern_weight=float(op.pattern_weight),
        margin=float(op.margin) if calibrated else params.margin,
        device=bundle.device,
        model_name=f"{bundle.info.name} {bundle.info.version} cxr",
    )


def with_cxr(result: AnalysisResult, radiograph: Radiograph | None, bundle: Any) -> AnalysisResult:
    """``result`` with its CXR branch (``AnalysisResult.cxr``) when there is a radiograph
    and the bundle has a CXR model; otherwise ``result`` unchanged."""
    from dataclasses import replace

    if radiograph is None:
        return result
    cxr = bundle_cxr(radiograph, bundle, result)
    return result if cxr is None else replace(result, cxr=cxr)
