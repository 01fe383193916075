#!/usr/bin/env python
"""Time and peak memory of each stage of the AI chain on a 300-slice 512 x 512 phantom.

    .venv/bin/python scripts/benchmark_chain.py                   # the shipped bundle
    .venv/bin/python scripts/benchmark_chain.py --bundle DIR      # another bundle
    .venv/bin/python scripts/benchmark_chain.py --random-bundle   # random weights, shipped sizes
    .venv/bin/python scripts/benchmark_chain.py --dicom           # also write + load_series

Prints one line per stage: wall seconds, CPU seconds (all threads), and the peak
resident memory of the process during the stage (sampled every few ms from /proc, so
torch's allocations count too), then the total. The phantom is built first and not timed;
anything written goes to a temporary folder that is removed at the end. The first run in a process pays one-off costs
(allocator, kernels, the explainer's copy of the classifier), so ``--repeat 2`` reports
the warm run too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Shipped-bundle sizes (issue 3): U-Net at 128 px, ResNet [1,1,1,1] with [16,32,64,128].
RANDOM_UNET_FEATURES = (8, 16, 32, 64, 64, 8)  # dicomnode train's default
RANDOM_RESNET_INPLANES = (16, 32, 64, 128)
SAMPLE_S = 0.005


class RssSampler:
    """Resident set size and CPU time of this process, sampled in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._rss(), time.process_time()))
            time.sleep(SAMPLE_S)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        inside = [rss for t, rss, _ in self.samples if start <= t <= end]
        return max(inside) if inside else self._rss()

    def cpu(self, start: float, end: float) -> float:
        """CPU seconds (all threads) spent between two instants, from the nearest samples."""

        def at(when: float) -> float:
            return min(self.samples, key=lambda s: abs(s[0] - when))[2]

        return at(end) - at(start) if self.samples else float("nan")


def make_random_bundle(out: Path) -> Path:
    import torch

    from pipeline.models import write_bundle
    from pipeline.nets import build_network, classifier_arch, unet_arch

    torch.manual_seed(0)
    archs = {
        "segmentation": unet_arch(features=RANDOM_UNET_FEATURES, input_size=128),
        "classifier": classifier_arch(4, layers=(1, 1, 1, 1), block_inplanes=RANDOM_RESNET_INPLANES),
        "locator": classifier_arch(2, layers=(1, 1, 1, 1), block_inplanes=RANDOM_RESNET_INPLANES),
    }
    nets = {role: build_network(a) for role, a in archs.items()}
    card = {
        "name": "benchmark-random",
        "version": "0",
        "trained_on_synthetic_data": True,
        "disclaimer": "RANDOM WEIGHTS for timing only. Not for clinical use.",
    }
    return write_bundle(out, nets, archs, card)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    p.add_argument(
        "--random-bundle", action="store_true", help="time a random-weight bundle of the shipped sizes (U-Net included)"
    )
    p.add_argument("--no-unet", action="store_true", help="with --random-bundle: classical lung segmentation")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--label", default="covid19")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--repeat", type=int, default=1, help="runs of the chain (the first one is cold)")
    p.add_argument("--dicom", action="store_true", help="also write the phantom as DICOM and time load_series")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    import torch

    from pipeline.chain import STAGES, analyze
    from pipeline.models import DEFAULT_BUNDLE_DIR, load_bundle
    from pipeline.params import ChainParams
    from pipeline.phantom import make_phantom

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="benchmark_chain_") as tmp:
        tmp_dir = Path(tmp)
        if args.random_bundle:
            bundle_dir = make_random_bundle(tmp_dir / "bundle")
            if args.no_unet:
                import json

                card = json.loads((bundle_dir / "model_card.json").read_text())
                del card["models"]["segmentation"]
                (bundle_dir / "model_card.json").write_text(json.dumps(card))
        else:
            bundle_dir = args.bundle or DEFAULT_BUNDLE_DIR
        t0 = time.perf_counter()
        phantom = make_phantom(args.label, args.seed, n_slices=args.slices, size_px=args.size)
        print(
            f"phantom {args.label} seed {args.seed}: {phantom.volume.shape} built in "
            f"{time.perf_counter() - t0:.1f} s (not counted)"
        )
        volume = phantom.volume
        t0 = time.perf_counter()
        models = load_bundle(bundle_dir, device=args.device)
        print(
            f"bundle {models.info.name} {models.info.version} on {models.device}: loaded in "
            f"{time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}, "
            f"CPU cores {os.cpu_count()}"
        )
        if args.dicom:
            from dicomnode.synthetic import write_ct_series
            from dicomnode.volume import load_series

            series = write_ct_series(volume, tmp_dir / "series")
            t0 = time.perf_counter()
            volume, _ = load_series(series.paths)
            print(f"load_series: {len(series.paths)} files in {time.perf_counter() - t0:.2f} s")

        params = replace(ChainParams(), device=args.device)
        for run in range(1, args.repeat + 1):
            with RssSampler() as rss:
                base = rss._rss()
                start = time.perf_counter()
                result = analyze(volume, models, params)
                end = time.perf_counter()
            print(
                f"\nrun {run}{' (cold)' if run == 1 else ''}: label {result.case_scores.label}, "
                f"lung {result.lung_mask.method} {result.lung_volume_ml:.0f} ml, "
                f"{len(result.slice_scores.z_indices)} slices classified, "
                f"{int((~_isnan(result.infected.scores)).sum())} located, {len(result.attention)} explained"
            )
            print(f"{'stage':<20}{'seconds':>9}{'CPU s':>8}{'peak RSS MiB':>14}{'+MiB vs start':>15}")
            t = start
            for stage in STAGES:
                dt = result.timings_s[stage]
                peak = rss.peak(t, t + dt)
                print(
                    f"{stage:<20}{dt:>9.2f}{rss.cpu(t, t + dt):>8.2f}{peak / 2**20:>14.0f}"
                    f"{(peak - base) / 2**20:>15.0f}"
                )
                t += dt
            peak = rss.peak(start, end)
            print(
                f"{'total':<20}{result.timings_s['total']:>9.2f}{rss.cpu(start, end):>8.2f}"
                f"{peak / 2**20:>14.0f}{(peak - base) / 2**20:>15.0f}"
            )
            print(f"load average now: {os.getloadavg()[0]:.1f} (other work on the machine inflates the seconds)")
    return 0


def _isnan(a):
    import numpy as np

    return np.isnan(a)


if __name__ == "__main__":
    sys.exit(main())
