"""Result objects: AnalysisResult + source CT datasets -> pydicom Datasets (highdicom).

``build_result_objects(result, volume, sources, options)`` returns a dict with one key
per enabled kind ("sr", "sc", "seg", "kos", "lobe_seg"), each a list of datasets ready to send
(an empty list where there is nothing to show, e.g. no Grad-CAM or an empty lung mask;
for an out-of-domain decision there is no Grad-CAM SC and no KOS, the SR and SEG stay).
Nothing here touches disk or network; docs/objects.md describes each object.
"""

from __future__ import annotations

from typing import Sequence

from pydicom.dataset import Dataset

from pipeline.types import AnalysisResult, CTVolume

from .common import check_inputs, source_views, uid_maker
from .kos import build_kos
from .options import OBJECT_KINDS, WriterError, WriterOptions
from .sc import build_sc
from .seg import build_lobe_seg, build_seg
from .sr import SRFindings, build_sr, read_findings

__all__ = [
    "OBJECT_KINDS",
    "SRFindings",
    "WriterError",
    "WriterOptions",
    "build_result_objects",
    "read_findings",
]


def build_result_objects(
    result: AnalysisResult, volume: CTVolume, sources: Sequence[Dataset], options: WriterOptions | None = None
) -> dict[str, list[Dataset]]:
    """Build the enabled result objects. ``sources`` are the CT datasets in the volume's
    z order (pixel data included). Raises WriterError when the inputs do not match."""
    options = options or WriterOptions()
    check_inputs(result, volume, sources)
    sources = source_views(sources, volume)
    uid = uid_maker(options, sources)
    out: dict[str, list[Dataset]] = {}
    for kind in OBJECT_KINDS:
        if kind not in options.enabled:
            continue
        if kind == "sr":
            out[kind] = [build_sr(result, volume, sources, options, uid)]
        elif kind == "sc":
            out[kind] = build_sc(result, volume, sources, options, uid)
        elif kind == "seg":
            seg = build_seg(result, volume, sources, options, uid)
            out[kind] = [seg] if seg is not None else []
        elif kind == "kos":
            kos = build_kos(result, volume, sources, options, uid)
            out[kind] = [kos] if kos is not None else []
        elif kind == "lobe_seg":
            lobe_seg = build_lobe_seg(result, volume, sources, options, uid)
            out[kind] = [lobe_seg] if lobe_seg is not None else []
    return out
