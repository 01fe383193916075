#!/usr/bin/env python
"""Store throughput: our node vs DCMTK storescp, one association each, same series.

Generates a CT series (default 300 slices of 512x512, 16-bit: ~0.5 MB per image) in a
temp folder, starts ``dicomnode serve`` (storage only: quiet period of a day, no
destinations) and DCMTK ``storescp`` on free loopback ports, sends the series with
``storescu`` (TCP_NODELAY=1) to each, alternating, ``--repeat`` times, and prints images/s
of each (median) and their ratio. Our node fsyncs every file and its folder before it
answers; storescp does not fsync.

``--breakdown`` also runs the listener in-process with timers around each step of the
C-STORE handler and prints where the time of one image goes.

    .venv/bin/python scripts/benchmark_store.py [--slices 300] [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_series(out: Path, slices: int, size: int) -> list[Path]:
    from dicomnode.synthetic import write_ct_series
    from pipeline.types import CTVolume

    rng = np.random.default_rng(0)
    hu = rng.normal(-400, 300, (slices, size, size)).astype(np.float32)
    return list(write_ct_series(CTVolume(hu=hu, spacing_mm=(1.0, 0.7, 0.7)), out).paths)


def fresh_copy(files: list[Path], out: Path) -> list[Path]:
    """``files`` with new Study, Series and SOP Instance UIDs (each send is then new to the
    receiver: resending the same UIDs would measure the duplicate path)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    copies = []
    for f in files:
        ds = dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f.name)
        copies.append(out / f.name)
    return copies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(node: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    """Until ``dicomnode serve`` has warmed up its bundle (its log says so) and then used
    less than 5% of a CPU for a second: its start-up work must not overlap the sends."""
    deadline = time.monotonic() + timeout
    while not any(w in log_path.read_text(errors="replace") for w in ("warmed up", "cannot be loaded")):
        if node.poll() is not None:
            raise SystemExit(f"dicomnode serve exited with {node.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"dicomnode serve not ready after {timeout:.0f} s")
        time.sleep(0.2)
    before = cpu_seconds(node.pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(node.pid)
        if now - before < 0.05:
            return
        before = now
    raise SystemExit(f"dicomnode serve still busy after {timeout:.0f} s")


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


def send(port: int, aec: str, files: list[Path]) -> float:
    """Images/s of one storescu association."""
    t0 = time.perf_counter()
    out = subprocess.run(
        ["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)], env=ENV, capture_output=True, text=True
    )
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"storescu failed:\n{out.stdout}{out.stderr}")
    return len(files) / dt


def send_fresh(port: int, aec: str, files: list[Path], folder: Path) -> float:
    """``send`` of a copy of ``files`` with new UIDs (made before the clock starts)."""
    copies = fresh_copy(files, folder)
    try:
        return send(port, aec, copies)
    finally:
        shutil.rmtree(folder)


def breakdown(files: list[Path], tmp: Path) -> None:
    """Time each step of the handler, in-process (wrappers around the store's functions)."""
    import dicomnode.header as header_mod
    import dicomnode.scp as scp_mod
    import dicomnode.store as store_mod
    from dicomnode.config import NodeSection, SelectionSection
    from dicomnode.db import Database
    from dicomnode.queue import JobQueue
    from dicomnode.series import SeriesAssembler

    spent: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    spent[name] += time.perf_counter() - t

        return wrapper

    real_fsync = os.fsync
    scp_mod.parse_header = timed("parse header", header_mod.parse_header)
    scp_mod.encode_file_meta = timed("file meta", header_mod.encode_file_meta)
    store_mod.fsync_dir = timed("fsync folder", store_mod.fsync_dir)
    store_mod.os.fsync = timed("fsync file (+folder)", real_fsync)
    scp_mod.store_durably = timed("handler (no DB record)", scp_mod.store_durably)
    db = Database(tmp / "bd" / "node.sqlite3")
    asm = SeriesAssembler(db, JobQueue(db), SelectionSection(), 86400)
    store = store_mod.InstanceStore(tmp / "bd" / "storage", 0)
    store.store = timed("store total", store.store)
    port = free_port()
    server = scp_mod.StorageSCP(
        NodeSection(ae_title="BENCH", port=port, bind_address="127.0.0.1"),
        store,
        timed("database record", asm.record_instance),
    )
    server.start()
    try:
        rate = send_fresh(port, "BENCH", files, tmp / "send-breakdown")
    finally:
        server.stop()
        os.fsync = real_fsync
        db.close()
    n = len(files)
    print(f"\nbreakdown (in-process listener, {rate:.0f} images/s, {1000 / rate:.2f} ms per image):")
    for name, total in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:22s} {1000 * total / n:6.2f} ms/image")
    print("  (fsync file includes the folder fsync; the rest of the time is receiving and answering)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--breakdown", action="store_true", help="also time the handler's steps in-process")
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's dcmtk")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_series(tmp / "series", args.slices, args.size)
        mb = sum(f.stat().st_size for f in files) / 2**20
        ours_port, dcmtk_port = free_port(), free_port()
        node_log = (tmp / "node.log").open("wb")
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomnode.cli",
                "serve",
                "--port",
                str(ours_port),
                "--bind",
                "127.0.0.1",
                "--data-dir",
                str(tmp / "node"),
                "--quiet-seconds",
                "86400",
                "--ae-title",
                "COVIDNODE",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=node_log,
        )
        (tmp / "storescp").mkdir()
        dcmtk = subprocess.Popen(
            ["storescp", "-od", str(tmp / "storescp"), str(dcmtk_port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(ours_port)
            wait_port(dcmtk_port)
            wait_ready(node, tmp / "node.log")
            ours, theirs = [], []
            for i in range(args.repeat):
                theirs.append(send_fresh(dcmtk_port, "ANY-SCP", files, tmp / f"send-{i}-dcmtk"))
                ours.append(send_fresh(ours_port, "COVIDNODE", files, tmp / f"send-{i}-node"))
        finally:
            node.terminate()
            dcmtk.terminate()
            node.wait(60)
            dcmtk.wait(10)
            node_log.close()
        o, t = statistics.median(ours), statistics.median(theirs)
        print(
            f"series: {len(files)} images of {args.size}x{args.size}, {mb:.0f} MB; one association each; "
            f"TCP_NODELAY=1; median of {args.repeat}"
        )
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        print(f"storescp (DCMTK, no fsync):      {t:7.1f} images/s   runs: {', '.join(f'{x:.0f}' for x in theirs)}")
        print(f"dicomnode (fsync file + folder): {o:7.1f} images/s   runs: {', '.join(f'{x:.0f}' for x in ours)}")
        print(f"ratio dicomnode / storescp:      {o / t:7.2f}")
        if args.breakdown:
            breakdown(files, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
