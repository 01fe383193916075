"""The node's error hierarchy: one module, small, each message says what to do.

The AI chain has its own (``pipeline.types.PipelineError``); these are the errors of the
DICOM side: configuration, storage, queue and delivery.
"""

from __future__ import annotations

from typing import Sequence


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(NodeError):
    """A configuration file has problems; ``problems`` lists each in plain words."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems: tuple[str, ...] = tuple(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"configuration {source} has {len(self.problems)} problem(s):\n{listed}\n"
            f"Fix them and run 'dicomnode config check {source}'."
        )


class StoreError(NodeError):
    """An instance could not be stored; ``status`` is the DICOM status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidUIDError(StoreError):
    """A UID is not a valid DICOM UID, so it must never become part of a path."""


class DiskFullError(StoreError):
    """Free space is below the configured guard (or the disk reported ENOSPC)."""


class DataDirLockedError(NodeError):
    """Another node process already uses this data folder."""


class QueueError(NodeError):
    """A job state change that the state machine does not allow."""


class WriterError(NodeError, ValueError):
    """The inputs cannot make valid result objects (says which input and what to do).

    A ValueError too: the writers' callers that catch bad values keep working."""


class SeriesRejected(NodeError):
    """A series that cannot be made into a CT volume; ``code`` is a short machine name.

    Codes: ``unreadable``, ``no_pixel_data``, ``localizer``, ``mixed_patient``,
    ``mixed_study``, ``mixed_series``, ``inconsistent_size``, ``mixed_orientation``,
    ``duplicate_position``, ``non_uniform_spacing``, ``too_few_slices``,
    ``unsupported_pixels``, ``no_geometry``, ``implausible_geometry`` (matrix size or
    volume beyond any CT), ``implausible_rescale``, ``truncated_pixels``.
    """

    def __init__(self, reason: str, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PriorsError(NodeError):
    """The PACS could not be asked for, or could not send, a patient's earlier studies
    (dicomnode.priors); transient: the caller may try again later."""


class BrokerError(NodeError):
    """The scale-out broker (dicomnode.broker) cannot be reached, or a message on it is
    malformed; the message names the broker URL or the field."""
