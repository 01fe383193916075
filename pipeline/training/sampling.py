"""Seeds and sample orders: per-epoch streams derived from (seed, epoch, purpose).

Every epoch starts from generators seeded by a hash of the run's seed, the epoch and
what the stream is for, so an epoch draws the same numbers whether the run started
at epoch 0 or was resumed from a checkpoint.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run's seed and any labels (epoch, stream name...)."""
    text = ":".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator_for(seed: int, *parts: object) -> torch.Generator:
    """A CPU torch generator seeded from ``derived_seed(seed, *parts)``."""
    return torch.Generator().manual_seed(derived_seed(seed, *parts))


def balanced_order(labels: np.ndarray, count: int, generator: torch.Generator) -> np.ndarray:
    """``count`` sample indices drawn with replacement, every class equally likely.

    Each sample's weight is 1 / (size of its class), so a rare class is seen as often
    as a common one (the paper code's class-balanced sampler).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("cannot sample from an empty training set")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = torch.from_numpy(1.0 / counts[inverse].astype(np.float64))
    return torch.multinomial(weights, int(count), replacement=True, generator=generator).numpy()


def shuffled_order(count: int, generator: torch.Generator) -> np.ndarray:
    """A random permutation of ``range(count)``."""
    return torch.randperm(int(count), generator=generator).numpy()


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split an order into batches; a last batch of one sample is dropped (BatchNorm
    cannot normalise a single sample in training mode)."""
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out
