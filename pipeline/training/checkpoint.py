"""Per-epoch checkpoints: model, optimizer, schedule, RNG states, epoch, history.

A checkpoint is written after every epoch to ``<bundle>/checkpoints/<role>/last.pt``
(temporary file, then an atomic rename, so a crash mid-write leaves the previous one).
It also stores the run's *fingerprint* (data spec, architecture, seed, batch size...):
``--resume`` refuses a checkpoint made with different settings instead of silently
mixing two runs.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..types import PipelineError

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "last.pt"


class TrainError(PipelineError):
    """Training cannot start or go on (bad settings, data or checkpoint); says why."""


@dataclass
class CosineSchedule:
    """Cosine learning-rate decay over the run's epochs, set explicitly every epoch.

    The rate of an epoch is a pure function of (epoch, epochs), so a run resumed with
    the same ``--epochs`` uses exactly the rates of an uninterrupted one.
    """

    base_lr: float
    epochs: int
    min_lr_fraction: float

    def lr(self, epoch: int) -> float:
        if self.epochs <= 1:
            return self.base_lr
        t = min(max(epoch, 0), self.epochs - 1) / (self.epochs - 1)
        low = self.base_lr * self.min_lr_fraction
        return low + 0.5 * (self.base_lr - low) * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        lr = self.lr(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "cosine",
            "base_lr": self.base_lr,
            "epochs": self.epochs,
            "min_lr_fraction": self.min_lr_fraction,
        }


def rng_states() -> dict[str, Any]:
    """Global RNG states (torch, numpy, python), saved for completeness: the loops draw
    from per-epoch generators, but a layer or library might use the global ones."""
    np_state: Any = np.random.get_state()  # the legacy tuple form (legacy=True, the default)
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def restore_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_tuplify(states["python"]))


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def checkpoint_path(bundle_dir: Path, role: str) -> Path:
    return Path(bundle_dir) / "checkpoints" / role / CHECKPOINT_FILE


def save_checkpoint(
    path: Path,
    *,
    role: str,
    fingerprint: Mapping[str, Any],
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: CosineSchedule,
    history: list[dict[str, Any]],
    elapsed_s: float,
) -> None:
    """Write the state after ``epoch`` completed epochs (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "role": role,
        "fingerprint": dict(fingerprint),
        "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng_states(),
        "history": list(history),
        "elapsed_s": float(elapsed_s),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, role: str, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check that it belongs to this run's settings."""
    if not path.is_file():
        raise TrainError(f"--resume: no checkpoint at {path}; start without --resume to train from scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise TrainError(
            f"--resume: checkpoint {path} cannot be read ({e}); delete it and train without --resume"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("role") != role:
        raise TrainError(f"--resume: {path} is not a {role} checkpoint of this trainer")
    saved = state.get("fingerprint", {})
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, now {fingerprint.get(k)!r}"
        for k in sorted(set(saved) | set(fingerprint))
        if saved.get(k) != fingerprint.get(k)
    ]
    if diffs:
        raise TrainError(
            f"--resume: checkpoint {path} was made with other settings ("
            + "; ".join(diffs)
            + "). Resume with the same settings, or train without --resume."
        )
    return state
