"""Add or replace one role's weights and card entry in a bundle folder.

Other roles already in the folder stay as they are. The bundle-level fields follow from
all roles: if any was trained on synthetic data the card says so and carries
``SYNTHETIC_DISCLAIMER``. Metrics measured by ``dicomnode evaluate`` on the previous
weights no longer describe the bundle once a role is retrained, so they are dropped
(with a warning) rather than left to mislead.
"""

from __future__ import annotations

import fcntl
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..models import CARD_FILE, SYNTHETIC_DISCLAIMER, write_bundle
from .checkpoint import TrainError

log = logging.getLogger(__name__)

RESEARCH_DISCLAIMER = "Research model. Not validated for clinical use."
DEFAULT_VERSION = "0.1.0"


def read_existing_card(bundle_dir: Path) -> dict[str, Any]:
    """The folder's card as plain JSON ({} when there is none yet).

    Not ``pipeline.models.read_card``: a bundle being built may hold only some roles.
    """
    path = Path(bundle_dir) / CARD_FILE
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainError(
            f"{path} exists but cannot be read ({e}); fix or delete it, or train into another --out folder"
        ) from e
    if not isinstance(card, dict):
        raise TrainError(f"{path} is not a model card (a JSON object); delete it or use another --out folder")
    return card


@contextmanager
def bundle_lock(bundle_dir: Path) -> Iterator[None]:
    """Exclusive lock on the bundle's card while it is read, changed and written, so two
    roles trained at the same time into one folder do not lose each other's entry."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with open(bundle_dir / ".card.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_bundle(
    bundle_dir: Path,
    role: str,
    model: torch.nn.Module,
    architecture: Mapping[str, Any],
    training: Mapping[str, Any],
    synthetic: bool,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
) -> Path:
    """Write ``role``'s weights and its card entry (architecture, training) into the bundle."""
    bundle_dir = Path(bundle_dir)
    with bundle_lock(bundle_dir):
        return _update_bundle(bundle_dir, role, model, architecture, training, synthetic, name, version, description)


def _update_bundle(
    bundle_dir: Path,
    role: str,
    model: torch.nn.Module,
    architecture: Mapping[str, Any],
    training: Mapping[str, Any],
    synthetic: bool,
    name: str | None,
    version: str | None,
    description: str | None,
) -> Path:
    card = read_existing_card(bundle_dir)
    models = {r: dict(e) for r, e in dict(card.get("models", {})).items()}
    models[role] = {"training": dict(training)}
    card["models"] = models
    card["name"] = name or card.get("name") or bundle_dir.resolve().name
    card["version"] = version or card.get("version") or DEFAULT_VERSION
    if description or "description" not in card:
        card["description"] = description or (
            "Lung U-Net, 4-class slice classifier and infectious-slice locator of the "
            "Jin et al. (2020) chain, trained with 'dicomnode train'; operating points and the "
            "out-of-domain reference chosen by 'dicomnode calibrate'."
        )
    flags = [
        bool(e.get("training", {}).get("trained_on_synthetic_data", synthetic if r == role else False))
        for r, e in models.items()
    ]
    card["trained_on_synthetic_data"] = any(flags)
    card["disclaimer"] = SYNTHETIC_DISCLAIMER if any(flags) else RESEARCH_DISCLAIMER
    cxr = card.get("cxr")
    if isinstance(cxr, dict) and cxr.pop("evaluations", None) is not None:
        log.warning("bundle %s: dropped the card's CXR figures (the CT they were fused with changed)", bundle_dir)
    if card.pop("metrics", None) is not None:
        log.warning(
            "bundle %s: dropped the card's metrics (measured on the previous %s weights); "
            "run 'dicomnode evaluate' again",
            bundle_dir,
            role,
        )
    # Operating points and the domain reference were chosen on the previous networks'
    # outputs: they no longer hold. The chain falls back to the paper's 0.5 and no guard
    # until 'dicomnode calibrate' is run again.
    for stale in ("operating_points", "domain_reference", "cross_family"):
        if card.pop(stale, None) is not None:
            log.warning(
                "bundle %s: dropped the card's %s (chosen with the previous %s weights); "
                "run 'dicomnode calibrate' again",
                bundle_dir,
                stale,
                role,
            )
    return write_bundle(bundle_dir, {role: model.cpu()}, {role: architecture}, card)


def record_metrics(bundle_dir: Path | str, metrics: Mapping[str, Any]) -> Path:
    """Put evaluation figures (with the data spec and the command that measured them)
    into the card's ``metrics``; weights are untouched. Returns the card's path."""
    return record_card_fields(bundle_dir, {"metrics": metrics})


def record_card_fields(bundle_dir: Path | str, fields: Mapping[str, Any]) -> Path:
    """Set top-level card fields (e.g. ``operating_points``, ``domain_reference``,
    ``cross_family``) under the card lock; weights are untouched. Returns the card's path."""
    from ..models import render_card_markdown

    bundle_dir = Path(bundle_dir)
    with bundle_lock(bundle_dir):
        card = read_existing_card(bundle_dir)
        if not card.get("models"):
            raise TrainError(f"{bundle_dir} has no model card with models; train the bundle first")
        card.update(json.loads(json.dumps(dict(fields), default=str)))
        path = bundle_dir / CARD_FILE
        path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        (bundle_dir / "MODEL_CARD.md").write_text(render_card_markdown(card))
        return path
