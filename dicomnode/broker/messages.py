"""The two messages of the scale-out queue, as frozen dataclasses with encode/decode.

A request is one claim of a job (``job_id``, ``attempts``): the node accepts a reply only
while that very claim holds, so a job analysed twice (a worker that died after replying, a
message redelivered) is recorded and delivered once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from ..errors import BrokerError


class Outcome(StrEnum):
    """How a worker ended a request."""

    ANALYSED = "analysed"  # results persisted under results/.incoming/<staging>/
    SKIPPED = "skipped"  # not a usable chest CT (the reason says why)
    FAILED = "failed"  # an error (the reason names it)
    RETRY = "retry"  # transient (disk full): run again after ``retry_after_s``


@dataclass(frozen=True)
class AnalysisRequest:
    """Node -> worker: analyse this claim of a job."""

    job_id: int
    attempts: int
    series_uid: str
    study_uid: str
    #: The series' instance files, relative to ``<data_dir>/storage``.
    instances: tuple[str, ...]
    #: Earlier jobs of the series whose reports the new one replaces (results/<id>/sr/).
    earlier_jobs: tuple[int, ...] = ()
    #: The node's data folder, as mounted on every worker machine ("": the worker's own).
    data_dir: str = ""
    #: The queue of the node's replies (one per node: several listeners share the workers).
    reply_queue: str = ""

    def encode(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> "AnalysisRequest":
        try:
            return cls(
                job_id=int(data["job_id"]),
                attempts=int(data["attempts"]),
                series_uid=str(data["series_uid"]),
                study_uid=str(data["study_uid"]),
                instances=tuple(str(p) for p in data["instances"]),
                earlier_jobs=tuple(int(j) for j in data.get("earlier_jobs", ())),
                data_dir=str(data.get("data_dir", "")),
                reply_queue=str(data.get("reply_queue", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BrokerError(f"malformed analysis request: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class AnalysisReply:
    """Worker -> node: how a request ended."""

    job_id: int
    attempts: int
    outcome: Outcome
    worker: str
    reason: str | None = None
    #: ANALYSED: the folder under results/.incoming/ that holds ``<job_id>/``.
    staging: str | None = None
    #: ANALYSED: (kind, SOP Instance UID, path relative to the results root) per object.
    written: tuple[tuple[str, str, str], ...] = ()
    #: ANALYSED: sha256 of the series' datasets and the bundle (dicomnode.worker.content_fingerprint).
    content_sha256: str | None = None
    timings_s: Mapping[str, float] = field(default_factory=dict)
    retry_after_s: float = 0.0

    def encode(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["written"] = [list(w) for w in self.written]
        data["timings_s"] = dict(self.timings_s)
        return data

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> "AnalysisReply":
        try:
            return cls(
                job_id=int(data["job_id"]),
                attempts=int(data["attempts"]),
                outcome=Outcome(data["outcome"]),
                worker=str(data["worker"]),
                reason=None if data.get("reason") is None else str(data["reason"]),
                staging=None if data.get("staging") is None else str(data["staging"]),
                written=tuple((str(k), str(u), str(p)) for k, u, p in data.get("written", ())),
                content_sha256=data.get("content_sha256"),
                timings_s={str(k): float(v) for k, v in dict(data.get("timings_s", {})).items()},
                retry_after_s=float(data.get("retry_after_s", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BrokerError(f"malformed analysis reply: {type(e).__name__}: {e}") from e
