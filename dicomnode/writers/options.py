"""What the writers are asked to build: kinds of object, series numbers, product name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from .. import PRODUCT_NAME, __version__
from ..config import OBJECT_KINDS
from ..errors import WriterError

if TYPE_CHECKING:
    from .trend import Trend


@dataclass(frozen=True)
class WriterOptions:
    """Options of build_result_objects.

    ``enabled``: the kinds to build (subset of OBJECT_KINDS; any iterable, normalised).
    ``max_overlays``: at most this many Grad-CAM Secondary Capture images.
    ``*_series_number``: Series Number of each new series (high, so that viewers list
    the AI series after the scanner's).
    ``uid_seed``: when set (e.g. the job id), every UID is derived from it and the source
    series, so a rebuild after a crash makes the very same objects (PACS then see a
    duplicate, not a second report). None: fresh random UIDs.
    ``previous_reports``: SRs this one replaces (an earlier analysis of the same series,
    made before more of its instances arrived): referenced as Predecessor Documents.
    ``trend``: the patient's prior studies and the multi-stage decision (writers.trend),
    None when ``[priors]`` is off or for a prior's own report.
    ``cxr_sources``: the datasets of the images the CXR branch read (the study's localizer),
    for ``result.cxr``; the SR references them and draws its CXR group on the first.
    """

    enabled: frozenset[str] = frozenset(OBJECT_KINDS)
    max_overlays: int = 5
    sr_series_number: int = 901
    sc_series_number: int = 902
    seg_series_number: int = 903
    kos_series_number: int = 904
    lobe_seg_series_number: int = 905
    product_name: str = PRODUCT_NAME
    product_version: str = __version__
    manufacturer: str = "COVID-CT-Node project"
    institution_name: str | None = None
    uid_seed: str | None = None
    previous_reports: tuple = ()
    trend: "Trend | None" = None
    cxr_sources: tuple = ()

    def __post_init__(self) -> None:
        enabled = frozenset(self.enabled if not isinstance(self.enabled, str) else [self.enabled])
        unknown = enabled - set(OBJECT_KINDS)
        if unknown:
            raise WriterError(
                f"WriterOptions.enabled: unknown object kind(s) {sorted(unknown)}; choose from {list(OBJECT_KINDS)}"
            )
        object.__setattr__(self, "enabled", enabled)
        if self.max_overlays < 0:
            raise WriterError(f"WriterOptions.max_overlays must be >= 0, got {self.max_overlays}")
        numbers = (
            self.sr_series_number,
            self.sc_series_number,
            self.seg_series_number,
            self.kos_series_number,
            self.lobe_seg_series_number,
        )
        if any(n < 1 for n in numbers) or len(set(numbers)) != len(numbers):
            raise WriterError(f"WriterOptions series numbers must be positive and distinct, got {numbers}")
        if not self.product_name or not self.product_version:
            raise WriterError("WriterOptions.product_name and product_version must not be empty")

    @classmethod
    def for_kinds(cls, kinds: Iterable[str], **kwargs) -> "WriterOptions":
        """Options that build only ``kinds`` (e.g. one destination's ``objects``)."""
        return cls(enabled=frozenset(kinds), **kwargs)
