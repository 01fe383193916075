#!/usr/bin/env python
"""Store throughput: our node vs DCMTK storescp, one association each, same series.

Generates a CT series (default 300 slices of 512x512, 16-bit: ~0.5 MB per image) in a
temp folder, starts ``dicomnode serve`` (storage only: quiet period of a day, no
destinations) and DCMTK ``storescp`` on free loopback ports, sends the series with
``storescu`` (TCP_NODELAY=1) to each, alternating, ``--repeat`` times, and prints images/s
of each (median) and their ratio. Every send is a copy with new UIDs, made before its
clock starts; the sends start once the node has warmed up and is idle. Our node answers
only once an instance is durable: in its journal (one shared fdatasync, the default) or,
with ``--direct`` also measured, with ``[node] journal = false`` (fsync of the file and its
folder). storescp does not fsync.

``--breakdown`` also runs the listener in-process with timers around each step of the
C-STORE handler and prints where the time of one image goes.

    .venv/bin/python scripts/benchmark_store.py [--slices 300] [--size 512] [--repeat 3] [--direct] [--breakdown]
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


def send(port: int, aec: str, batches: list[list[Path]]) -> float:
    """Images/s of one storescu association per batch, all at once (in all)."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for files in batches
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    dt = time.perf_counter() - t0
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed:\n{output}")
    return sum(len(files) for files in batches) / dt


def send_fresh(port: int, aec: str, files: list[Path], folder: Path, associations: int = 1) -> float:
    """``send`` of copies of ``files`` with new UIDs, one per association (made before the
    clock starts)."""
    batches = [fresh_copy(files, folder / f"a{k}") for k in range(associations)]
    try:
        return send(port, aec, batches)
    finally:
        shutil.rmtree(folder)


def breakdown(files: list[Path], tmp: Path, journal: bool, associations: int) -> None:
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

    real = (os.fsync, os.fdatasync, scp_mod.parse_header, scp_mod.encode_file_meta, store_mod.fsync_dir)
    real_store_durably = scp_mod.store_durably
    scp_mod.parse_header = timed("parse header", header_mod.parse_header)
    scp_mod.encode_file_meta = timed("file meta", header_mod.encode_file_meta)
    store_mod.fsync_dir = timed("fsync folder", store_mod.fsync_dir)
    os.fsync = timed("fsync file (+folder)", real[0])
    os.fdatasync = timed("fdatasync (flush thread)", real[1])
    scp_mod.store_durably = timed("handler (no DB record)", scp_mod.store_durably)
    where = tmp / ("bd-journal" if journal else "bd-direct")
    db = Database(where / "node.sqlite3")
    asm = SeriesAssembler(db, JobQueue(db), SelectionSection(), 86400)
    store = store_mod.InstanceStore(where / "storage", 0, journal_dir=(where / "journal") if journal else None)
    store.store_durable = timed("durable store total", store.store_durable)
    if store.journal is not None:
        store.journal.append = timed("journal append+wait", store.journal.append)
        store.journal.materialise = timed("file behind journal", store.journal.materialise)
    port = free_port()
    server = scp_mod.StorageSCP(
        NodeSection(ae_title="BENCH", port=port, bind_address="127.0.0.1"),
        store,
        timed("record (file+DB)", asm.record_instance),
    )
    server.start()
    try:
        rate = send_fresh(port, "BENCH", files, where / "send", associations)
    finally:
        server.stop()
        store.close()
        os.fsync, os.fdatasync, scp_mod.parse_header, scp_mod.encode_file_meta, store_mod.fsync_dir = real
        scp_mod.store_durably = real_store_durably
        db.close()
    n = len(files) * associations
    flushes = f", {store.journal.flushes} flushes" if store.journal is not None else ""
    print(
        f"\nbreakdown, {'journal' if journal else 'direct (fsync file + folder)'} (in-process listener, "
        f"{associations} association(s), "
        f"{rate:.0f} images/s, {1000 / rate:.2f} ms per image{flushes}):"
    )
    for name, total in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:26s} {1000 * total / n:6.2f} ms/image")


def start_node(tmp: Path, name: str, port: int, journal: bool) -> tuple[subprocess.Popen, Path]:
    """``dicomnode serve`` (storage only) on ``port``, its stderr in a log file."""
    config = tmp / f"{name}.toml"
    text = (REPO / "config" / "node.toml").read_text()
    # Storage only: no series completes (the quiet period is a day, and a sender's release
    # must not start the AI chain on the CPUs the next sends are measured on).
    text = text.replace("complete_on_release = true", "complete_on_release = false")
    config.write_text(text.replace("[node]\n", f"[node]\njournal = {'true' if journal else 'false'}\n", 1))
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log_file:
        node = subprocess.Popen(
            [
                *(sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)),
                *("--port", str(port), "--bind", "127.0.0.1", "--data-dir", str(tmp / name)),
                *("--quiet-seconds", "86400", "--ae-title", "COVIDNODE", "--http-port", "0"),
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    return node, log_path


def stop(proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    """Wait for a terminated node; kill it (and show its log) if it does not stop."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace")[-3000:]
        print(f"warning: dicomnode serve did not stop within {timeout:.0f} s; killed. Its log ends:\n{tail}")


def disk_floor(tmp: Path, image_bytes: int, count: int = 100) -> float:
    """ms per image of the cheapest durable write there is here: pwrite of one image into a
    preallocated, zero-filled file and fdatasync (no metadata). Any receiver that answers
    only once an image is durable pays at least this; storescp pays nothing."""
    from dicomnode.journal import make_segment

    path = tmp / "floor.wal"
    fd = make_segment(path, count * image_bytes + 4096)
    data = os.urandom(image_bytes)
    try:
        t = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, data, 4096 + i * image_bytes)
            os.fdatasync(fd)
        return 1000 * (time.perf_counter() - t) / count
    finally:
        os.close(fd)
        path.unlink()


def row(label: str, runs: list[float]) -> str:
    return f"{label:34s} {statistics.median(runs):7.1f} images/s   runs: {', '.join(f'{x:.0f}' for x in runs)}"


def measure(tmp: Path, files: list[Path], repeat: int, direct: bool, associations: int) -> dict[str, list[float]]:
    """Images/s of storescp and of our node(s), interleaved, ``repeat`` times each."""
    (tmp / "storescp").mkdir()
    dcmtk_port = free_port()
    # storescp serves one association at a time unless it forks one process per association.
    fork = ["--fork"] if associations > 1 else []
    dcmtk = subprocess.Popen(
        ["storescp", *fork, "-od", str(tmp / "storescp"), str(dcmtk_port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes = {"journal": start_node(tmp, "node-journal", free_port(), True)}
    if direct:
        nodes["direct"] = start_node(tmp, "node-direct", free_port(), False)
    ports = {name: int(proc.args[proc.args.index("--port") + 1]) for name, (proc, _) in nodes.items()}
    runs: dict[str, list[float]] = {"storescp": [], **{name: [] for name in nodes}}
    try:
        wait_port(dcmtk_port)
        for name, (proc, log_path) in nodes.items():
            wait_port(ports[name])
            wait_ready(proc, log_path)
        for i in range(repeat):
            runs["storescp"].append(send_fresh(dcmtk_port, "ANY-SCP", files, tmp / f"send-{i}-dcmtk", associations))
            for name in nodes:
                folder = tmp / f"send-{i}-{name}"
                runs[name].append(send_fresh(ports[name], "COVIDNODE", files, folder, associations))
    finally:
        for proc, _ in nodes.values():
            proc.terminate()
        dcmtk.terminate()
        for proc, log_path in nodes.values():
            stop(proc, log_path)
        dcmtk.wait(10)
    sent = repeat * associations * len(files)
    for name in nodes:
        check_kept(tmp / f"node-{name}", sent, name)
    return runs


def check_kept(data_dir: Path, sent: int, name: str) -> None:
    """Every instance storescu had answered with success is a file in the node's storage
    after it stopped (its journal checkpointed); exits naming the shortfall otherwise."""
    kept = sum(1 for _ in data_dir.rglob("*.dcm"))
    print(f"instances kept by the node ({name}): {kept} of {sent} sent", flush=True)
    if kept != sent:
        raise SystemExit(f"{name}: {sent - kept} instance(s) answered with success are missing from {data_dir}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--breakdown", action="store_true", help="also time the handler's steps in-process")
    ap.add_argument("--direct", action="store_true", help="also measure the node with [node] journal = false")
    ap.add_argument(
        "--associations", type=int, default=1, help="storescu processes at once, one series each (storescp: --fork)"
    )
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's dcmtk")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_series(tmp / "series", args.slices, args.size)
        mb = sum(f.stat().st_size for f in files) / 2**20
        load_before = os.getloadavg()
        floor_before = disk_floor(tmp, files[0].stat().st_size)
        runs = measure(tmp, files, args.repeat, args.direct, args.associations)
        floor_after = disk_floor(tmp, files[0].stat().st_size)
        print(
            f"series: {len(files)} images of {args.size}x{args.size}, {mb:.0f} MB; {args.associations} "
            f"association(s) at once, one series each{' (storescp --fork)' if args.associations > 1 else ''}; "
            f"TCP_NODELAY=1; fresh UIDs per send; median of {args.repeat}"
        )
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average before "
            f"{' '.join(f'{x:.1f}' for x in load_before)}, after {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        floor = (floor_before + floor_after) / 2
        print(
            f"disk floor (pwrite + fdatasync of one image, preallocated file): {floor_before:.2f} ms before, "
            f"{floor_after:.2f} ms after = at most {1000 / floor:.0f} durable images/s on one association"
        )
        t = statistics.median(runs["storescp"])
        print(row("storescp (DCMTK, no fsync):", runs["storescp"]))
        print(row("dicomnode (journal, fdatasync):", runs["journal"]))
        if "direct" in runs:
            print(row("dicomnode (fsync file + folder):", runs["direct"]))
        print(f"ratio dicomnode (journal) / storescp: {statistics.median(runs['journal']) / t:5.2f}")
        if "direct" in runs:
            print(f"ratio dicomnode (direct) / storescp:  {statistics.median(runs['direct']) / t:5.2f}")
        if args.breakdown:
            breakdown(files, tmp, journal=True, associations=args.associations)
            breakdown(files, tmp, journal=False, associations=args.associations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
