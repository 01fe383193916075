#!/usr/bin/env python
"""Scale-out throughput: series per minute with 1 and with 2 ``dicomnode worker`` processes.

In one run: generates ``--series`` synthetic chest CT series (pipeline.phantom, COVID-19,
``--slices`` x ``--size``), starts Debian's ``redis-server`` on a free loopback port, then
for each worker count a fresh data folder, ``dicomnode serve`` with ``[broker]`` on (no
destination: a job is done once its results are stored) and the workers (each with
``--torch-threads`` = cores / workers, so that the runs use the same CPUs), waits until
every worker has loaded and warmed up the bundle, sends every series with DCMTK
``storescu`` and measures from the first C-STORE to the last job done. Prints series per
minute of each run and their ratio.

    .venv/bin/python scripts/benchmark_workers.py [--series 8] [--slices 64] [--size 256] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"}
FINAL = ("done", "failed", "skipped")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose output is collected; ``wait_line`` polls for a line."""

    def __init__(self, args: list[str], cwd: Path = REPO) -> None:
        self.lines: list[str] = []
        self.p = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip())

    def wait_line(self, text: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no '{text}' from {self.p.args}:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.1)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(120)
            except subprocess.TimeoutExpired:
                self.p.kill()


def make_series(out: Path, count: int, slices: int, size: int) -> list[list[Path]]:
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    return [
        list(
            write_ct_series(
                make_phantom("covid19", seed=500 + i, n_slices=slices, size_px=size).volume, out / f"s{i}"
            ).paths
        )
        for i in range(count)
    ]


CONFIG = """
[node]
min_free_mb = 0
[selection]
max_slice_thickness_mm = 0
[pipeline]
device = "cpu"
{bundle}
[broker]
url = "{url}"
namespace = "{namespace}"
max_in_flight = {window}
"""


def final_jobs(db: Path) -> int:
    try:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT state FROM jobs").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return sum(1 for (state,) in rows if state in FINAL)


def run_once(tmp: Path, url: str, n_workers: int, series: list[list[Path]], bundle: Path | None) -> float:
    """Seconds from the first C-STORE to the last job done, with ``n_workers`` workers."""
    data = tmp / f"data-{n_workers}"
    config = tmp / f"node-{n_workers}.toml"
    config.write_text(
        CONFIG.format(
            url=url,
            namespace=f"bench{n_workers}",
            window=2 * n_workers,
            bundle=f'bundle = "{bundle}"' if bundle else "",
        )
    )
    port = free_port()
    py = [sys.executable, "-m", "dicomnode.cli"]
    node = Proc(
        [*py, "serve", "--config", str(config), "--data-dir", str(data), "--port", str(port)]
        + ["--bind", "127.0.0.1", "--http-port", "0"]
    )
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    workers = [
        Proc(
            [*py, "worker", "--config", str(config), "--data-dir", str(data), "--name", f"w{i + 1}"]
            + ["--torch-threads", str(threads)]
        )
        for i in range(n_workers)
    ]
    try:
        node.wait_line("listening on")
        for w in workers:
            w.wait_line(" ready: ")
        storescu = shutil.which("storescu") or sys.exit("storescu missing: apt-get install dcmtk")
        t0 = time.monotonic()
        for paths in series:
            subprocess.run(
                [storescu, "-aec", "COVIDNODE", "127.0.0.1", str(port), *map(str, paths)],
                env=ENV,
                check=True,
                capture_output=True,
            )
        while final_jobs(data / "node.sqlite3") < len(series):
            if time.monotonic() - t0 > 3600:
                raise SystemExit("jobs did not finish within an hour")
            time.sleep(0.2)
        return time.monotonic() - t0
    finally:
        for w in workers:
            w.stop()
        node.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bundle", type=Path, help="model bundle (default: the shipped demo bundle)")
    args = ap.parse_args()
    redis_exe = shutil.which("redis-server") or sys.exit("redis-server missing: apt-get install redis-server")
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, load {os.getloadavg()}")
    print(
        f"series: {args.series} x {args.slices} slices of {args.size}x{args.size}, bundle "
        f"{args.bundle or 'models/covid-ct-demo'}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as t:
        tmp = Path(t)
        series = make_series(tmp / "in", args.series, args.slices, args.size)
        rport = free_port()
        redis = Proc(
            [redis_exe, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], cwd=tmp
        )
        redis.wait_line("Ready to accept connections", 30)
        try:
            rates = {}
            for n in (1, 2):
                seconds = run_once(tmp, f"redis://127.0.0.1:{rport}/0", n, series, args.bundle)
                rates[n] = args.series / seconds * 60
                print(
                    f"{n} worker(s): {args.series} series in {seconds:.1f} s = {rates[n]:.2f} series/min "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
