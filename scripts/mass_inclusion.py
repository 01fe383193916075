"""Tumours and nodules against the chain's lung mask, on family-B phantoms (development aid).

Issue 8's real-patient failure was a lung mask that cut a tumour out of the lung and a
chain that then called the CT pneumonia. Family B draws solid nodules and tumour masses in
some healthy cases (``TruthB.mass_mask``: inside the true lung, never a lesion of
infection); ``dicomnode evaluate`` does not see them (a data set's case carries no mass
mask). This prints, per healthy case with a mass and in summary, the share of mass voxels
inside the lung mask of the bundle's U-Net (and of the classical method) and the share the
U-Net calls lesion of infection:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/mass_inclusion.py --seed 777002 --count 48

Cases are the healthy ones of ``phantom:count=N,seed=S,family=b,mix=1:0:0:0`` (224 px, 48
slices unless told). Family B's held-out evaluation seed 900001 is the reported test set:
do not develop on it.
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.chain import sized_for
from pipeline.datasets import open_dataset
from pipeline.lung import segment_lungs, segment_lungs_classical
from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
from pipeline.params import ChainParams
from pipeline.phantoms.family_b import build_phantom_b


def share(part: np.ndarray, whole: np.ndarray) -> float:
    """The share of ``whole``'s voxels that are also in ``part``."""
    return float(np.count_nonzero(part & whole)) / max(int(np.count_nonzero(whole)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=777002)
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE_DIR))
    args = ap.parse_args()
    bundle = load_bundle(args.bundle, "cpu")
    seg_params = sized_for(ChainParams(), bundle.card.architecture("segmentation"), "unet_input_size")
    spec = f"phantom:count={args.count},seed={args.seed},size={args.size},slices={args.slices},family=b,mix=1:0:0:0"
    rows = []
    for case in open_dataset(spec):
        phantom, truth = build_phantom_b(case.label, int(case.extras["seed"]), args.slices, args.size)
        mass = truth.mass_mask
        if not mass.any():
            continue
        unet = segment_lungs(phantom.volume, seg_params, bundle.segmentation, "cpu")
        classical = segment_lungs_classical(phantom.volume, ChainParams())
        assert unet.lesion is not None
        row = (share(unet.mask, mass), share(classical, mass), share(unet.lesion, mass))
        rows.append(row)
        ml = float(np.count_nonzero(mass)) * phantom.volume.voxel_volume_ml
        print(
            f"{case.case_id}  mass {ml:6.1f} ml  inside U-Net mask {row[0]:.2f}  classical {row[1]:.2f}  "
            f"called lesion {row[2]:.2f}",
            flush=True,
        )
    if not rows:
        raise SystemExit(f"no case of {spec} has a nodule or tumour")
    a = np.asarray(rows)
    print(f"{len(rows)} healthy cases with a mass ({spec}), bundle {args.bundle}:")
    print(f"  mass inside the U-Net lung mask: mean {a[:, 0].mean():.3f}, min {a[:, 0].min():.3f}")
    print(f"  mass inside the classical lung mask: mean {a[:, 1].mean():.3f}, min {a[:, 1].min():.3f}")
    print(f"  mass called lesion of infection by the U-Net: mean {a[:, 2].mean():.3f}, max {a[:, 2].max():.3f}")


if __name__ == "__main__":
    main()
