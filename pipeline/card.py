"""The model card (``model_card.json``) as typed data, read and checked once per bundle.

``ModelCard.from_mapping`` turns the JSON into frozen dataclasses: the bundle's name,
version, disclaimer and synthetic-data flag, one ``ModelEntry`` per network (file, sha256,
architecture, training record), and the sections other modules parse further (operating
points: pipeline.decision; domain reference: pipeline.domain; lesion pattern:
pipeline.lesion_pattern). ``raw`` keeps the whole mapping for the writer of MODEL_CARD.md
and for the fields no code reads (metrics, cross-family figures). The card writers
(pipeline.training.bundle, calibrate) build JSON and use the same key names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .types import ModelBundleError

#: Roles a bundle must have (the segmentation is optional: the classical method stands in).
REQUIRED_ROLES = ("classifier", "locator")


@dataclass(frozen=True)
class ModelEntry:
    """One network of the bundle as its card lists it."""

    role: str
    file: str
    sha256: str | None
    #: The pipeline.nets architecture dict the weights belong to.
    architecture: Mapping[str, Any]
    #: How it was trained (data, command, validation figures); empty when not recorded.
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int | None:
        size = self.architecture.get("input_size")
        return int(size) if size else None


@dataclass(frozen=True)
class ModelCard:
    """A bundle's card (see the module docstring)."""

    name: str
    version: str
    disclaimer: str
    trained_on_synthetic_data: bool
    models: Mapping[str, ModelEntry]
    operating_points: Mapping[str, Any] = field(default_factory=dict)
    domain_reference: Mapping[str, Any] | None = None
    lesion_pattern: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_mapping(cls, card: Any, source: str, default_name: str = "") -> "ModelCard":
        """Check and type a parsed card; ModelBundleError names ``source`` and the problem."""
        if not isinstance(card, Mapping) or not isinstance(card.get("models"), Mapping):
            raise ModelBundleError(f"model bundle card {source} has no 'models' table")
        for role in REQUIRED_ROLES:
            if role not in card["models"]:
                raise ModelBundleError(f"model bundle card {source} lists no '{role}' model")
        models = {role: _entry(role, entry, source) for role, entry in card["models"].items()}
        for key in ("operating_points", "domain_reference", "lesion_pattern"):
            if card.get(key) is not None and not isinstance(card[key], Mapping):
                raise ModelBundleError(f"model bundle card {source}: '{key}' must be a table")
        return cls(
            name=str(card.get("name") or default_name),
            version=str(card.get("version", "0")),
            disclaimer=str(card.get("disclaimer", "")),
            trained_on_synthetic_data=bool(card.get("trained_on_synthetic_data", False)),
            models=models,
            operating_points=dict(card.get("operating_points") or {}),
            domain_reference=card.get("domain_reference") or None,
            lesion_pattern=card.get("lesion_pattern") or None,
            raw=card,
        )

    def architecture(self, role: str) -> Mapping[str, Any] | None:
        """The architecture dict of ``role``; None when the bundle has no such network."""
        entry = self.models.get(role)
        return None if entry is None else entry.architecture


def _entry(role: str, entry: Any, source: str) -> ModelEntry:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("architecture"), Mapping):
        raise ModelBundleError(f"model bundle card {source}: model '{role}' has no architecture table")
    training = entry.get("training") or {}
    return ModelEntry(
        role=role,
        file=str(entry.get("file", f"{role}.pt")),
        sha256=str(entry["sha256"]) if entry.get("sha256") else None,
        architecture=entry["architecture"],
        training=training if isinstance(training, Mapping) else {},
    )
