"""Per-lobe Dice of pipeline.lobes on phantoms of both families (development aid).

Builds ``--count`` cases per family (labels cycled through the classes, case seeds
``seed, seed+1, ...``), segments the lobes on the true lung mask and on the chain's
classical lung mask, and prints the Dice of each lobe per case and the means.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lobe_dice.py --family b --seed 777001 --count 4

Family B's held-out evaluation seed (900001 and the cases drawn from it) is the reported
test set: do not develop on it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.lobes import fit_lobes
from pipeline.lung import segment_lungs_classical
from pipeline.params import ChainParams
from pipeline.phantom import Phantom, make_phantom
from pipeline.phantoms import make_phantom_b
from pipeline.types import CLASS_NAMES

MAKERS = {"a": make_phantom, "b": make_phantom_b}
NAMES = ("RU", "RM", "RL", "LU", "LL")


def lobe_dice(labels: np.ndarray, truth: np.ndarray, lung: np.ndarray) -> list[float]:
    """Dice of each lobe (1-5), inside ``lung``."""
    out = []
    for i in range(1, 6):
        a, b = (labels == i) & lung, (truth == i) & lung
        out.append(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))
    return out


def one_case(p: Phantom, mask: np.ndarray) -> tuple[list[float], dict[str, str]]:
    fit = fit_lobes(p.volume.hu, mask, p.volume.spacing_mm)
    truth_lung = p.lung_mask & mask
    return lobe_dice(fit.labels, p.lobe_mask, truth_lung), fit.fissures


def _row(tag: str, dice: list[float], extra: str = "") -> str:
    return f"{tag:<28}" + " ".join(f"{d:5.3f}" for d in dice) + f"  mean {np.mean(dice):5.3f} {extra}"


def run(family: str, seed: int, count: int, size: int, slices: int, chain_mask: bool) -> None:
    rows: dict[str, list[list[float]]] = {"true": [], "chain": []}
    print(f"family {family}: {'case':<20}" + " ".join(f"{n:>5}" for n in NAMES))
    for k in range(count):
        label = CLASS_NAMES[k % len(CLASS_NAMES)]
        start = time.perf_counter()
        p = MAKERS[family](label, seed + k, n_slices=slices, size_px=size)
        masks = {"true": p.lung_mask}
        if chain_mask:
            masks["chain"] = segment_lungs_classical(p.volume, ChainParams())
        for kind, mask in masks.items():
            dice, how = one_case(p, mask)
            rows[kind].append(dice)
            found = ",".join(f"{k[0]}{k.split('_')[1][0]}:{v[0]}" for k, v in how.items())
            print(_row(f"{seed + k} {label[:8]} {kind}", dice, f"{found} {time.perf_counter() - start:.0f}s"))
    for kind, got in rows.items():
        if got:
            print(_row(f"MEAN {family} {kind} (n={len(got)})", list(np.mean(got, axis=0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=("a", "b"), action="append")
    ap.add_argument("--seed", type=int, default=777001)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--no-chain-mask", action="store_true", help="only the true lung mask")
    a = ap.parse_args()
    if a.seed == 900001:
        raise SystemExit("seed 900001 is family B's held-out test set")
    for family in a.family or ["a", "b"]:
        run(family, a.seed, a.count, a.size, a.slices, not a.no_chain_mask)


if __name__ == "__main__":
    main()
