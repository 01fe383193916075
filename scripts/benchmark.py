#!/usr/bin/env python
"""Issue 13's figures in one run: receive rate, end to end, chain stages, peak RSS.

1. Images/s of ``dicomnode serve`` (storage only) and of DCMTK ``storescp`` on 1
   association and on 8 at once (8 ``storescu`` processes, one series each, against
   ``storescp --fork``), side by side, and their ratios: scripts/benchmark_store.py's
   ``measure`` (fresh UIDs per send, sends only once the node is warm and idle).
2. End to end: a fresh ``dicomnode serve`` with the bundle (default: the shipped
   models/covid-ct-demo), the default configuration (``complete_on_release = true``) and a
   DCMTK ``storescp`` destination; a phantom CT (covid19) is sent with one ``storescu``
   twice (new UIDs the second time). For each case: seconds from the last instance
   received (``storescu`` returned: every instance answered) to the last result object
   written by the destination (the newest file's mtime, once the node recorded every
   delivery of the job as sent). The first case after start is "cold", the next "warm".
3. Per-stage seconds of the AI chain of those two cases, from the node's own
   ``results/<job>/summary.json`` (``timings_s``): no separate run.
4. Peak RSS of the node process of part 2 (VmHWM in /proc/<pid>/status), and its VmRSS
   sampled after start-up, during the receives and during the analyses (what dominates).

    .venv/bin/python scripts/benchmark.py                           # 300 x 512, the issue's case
    .venv/bin/python scripts/benchmark.py --slices 60 --size 256    # a quick check
    .venv/bin/python scripts/benchmark.py --json out.json --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_store as bs  # noqa: E402  (scripts/ is not a package)

REPO = bs.REPO
ASSOCIATIONS = (1, 8)
FINAL_JOB_STATES = ("done", "failed", "skipped")


# --------------------------------------------------------------------------- 1. receive


def receive_rates(tmp: Path, slices: int, size: int, repeat: int) -> dict[str, Any]:
    """Median images/s of storescp and of the node on 1 and 8 associations, and ratios."""
    files = bs.make_series(tmp / "store-series", slices, size)
    floor_before = bs.disk_floor(tmp, files[0].stat().st_size)
    out: dict[str, Any] = {}
    for n in ASSOCIATIONS:
        folder = tmp / f"store-{n}"
        folder.mkdir()
        runs = bs.measure(folder, files, repeat, False, n)
        shutil.rmtree(folder)  # 8 x 300 x 0.5 MB per send and receiver: free the disk
        dcmtk, node = statistics.median(runs["storescp"]), statistics.median(runs["journal"])
        out[str(n)] = {"storescp": dcmtk, "node": node, "ratio": node / dcmtk, "runs": runs}
    floor_after = bs.disk_floor(tmp, files[0].stat().st_size)
    shutil.rmtree(tmp / "store-series")
    out["disk_floor_ms"] = [floor_before, floor_after]
    return out


# --------------------------------------------------------------------------- 2. end to end


class Destination:
    """DCMTK storescp as the PACS (as tests/node_helpers.StoreSCP), -uf: a file per SOP UID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = bs.free_port()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(folder), "-uf", str(self.port)],
            env=bs.ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bs.wait_port(self.port)

    def newest_mtime(self) -> float:
        return max((p.stat().st_mtime for p in self.folder.iterdir() if p.is_file()), default=0.0)

    def count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RssSampler:
    """VmRSS of a process every 50 ms (wall-clock stamped) and its VmHWM on demand."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.status_kib("VmRSS")))
            except OSError:
                return
            time.sleep(0.05)

    def peak_mib(self, start: float, end: float) -> float:
        inside = [kib for t, kib in self.samples if start <= t <= end]
        if not inside:  # a window shorter than the sampling interval: the sample before it
            inside = [kib for t, kib in self.samples if t < start][-1:]
        return max(inside, default=0) / 1024

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def make_case(folder: Path, slices: int, size: int, seed: int) -> list[Path]:
    """A chest CT phantom (covid19) as DICOM files (what scripts/benchmark_chain.py analyses)."""
    from dicomnode.synthetic import write_ct_series
    from pipeline.phantom import make_phantom

    phantom = make_phantom("covid19", seed, n_slices=slices, size_px=size)
    return list(write_ct_series(phantom.volume, folder).paths)


def start_full_node(tmp: Path, dest_port: int, bundle: Path | None, device: str) -> tuple[subprocess.Popen, Path]:
    """``dicomnode serve`` with the default configuration (complete_on_release on), the
    storescp destination and the bundle on ``device``."""
    text = (REPO / "config" / "node.toml").read_text().replace('device = "auto"', f'device = "{device}"')
    config = tmp / "node-e2e.toml"
    config.write_text(text.replace("min_free_mb = 500", "min_free_mb = 0"))
    port = bs.free_port()
    args = [
        *(sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)),
        *("--port", str(port), "--bind", "127.0.0.1", "--data-dir", str(tmp / "node-e2e")),
        *("--ae-title", "COVIDNODE", "--http-port", "0", "--destination", f"PACS@127.0.0.1:{dest_port}"),
        *(("--bundle", str(bundle)) if bundle is not None else ()),
    ]
    log_path = tmp / "node-e2e.log"
    with log_path.open("wb") as log_file:
        node = subprocess.Popen(args, cwd=REPO, env=bs.ENV, stdout=subprocess.DEVNULL, stderr=log_file)
    bs.wait_port(port, timeout=180)
    bs.wait_ready(node, log_path, timeout=600)
    return node, log_path


def job_of(db_path: Path, series_uid: str) -> dict[str, Any] | None:
    """The newest job of a series with its deliveries by state, or None (read-only)."""
    if not db_path.exists():
        return None
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT id, state, reason FROM jobs WHERE series_uid=? ORDER BY id DESC LIMIT 1", (series_uid,)
        ).fetchone()
        if row is None:
            return None
        states = dict(
            conn.execute("SELECT state, COUNT(*) FROM deliveries WHERE job_id=? GROUP BY state", (row[0],)).fetchall()
        )
        kinds = [k for (k,) in conn.execute("SELECT kind FROM deliveries WHERE job_id=? ORDER BY kind", (row[0],))]
    except sqlite3.OperationalError:  # the node has not created its tables yet
        return None
    finally:
        conn.close()
    return {"id": row[0], "state": row[1], "reason": row[2], "deliveries": states, "kinds": kinds}


def wait_delivered(db_path: Path, series_uid: str, log_path: Path, timeout: float) -> dict[str, Any]:
    """Until the series' job is final and none of its deliveries is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_of(db_path, series_uid)
        if job is not None and job["state"] in FINAL_JOB_STATES:
            if job["state"] != "done":
                raise SystemExit(f"job {job['id']} {job['state']}: {job['reason']}\n{log_path.read_text()[-3000:]}")
            if job["deliveries"] and not job["deliveries"].get("pending"):
                return job
        time.sleep(0.05)
    raise SystemExit(f"series {series_uid} not delivered after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def send_case(node: subprocess.Popen, tmp: Path, case: list[Path], name: str) -> tuple[str, float, float]:
    """A fresh copy of the case sent on one association: its series UID and the wall
    clock when the send started and when storescu returned (every instance answered)."""
    from pydicom import dcmread

    copy = bs.fresh_copy(case, tmp / f"send-{name}")
    series_uid = str(dcmread(copy[0], stop_before_pixels=True).SeriesInstanceUID)
    port = node.args[node.args.index("--port") + 1]
    started = time.time()
    sent = subprocess.run(
        ["storescu", "-aet", "SCANNER", "-aec", "COVIDNODE", "127.0.0.1", port, *map(str, copy)],
        env=bs.ENV,
        capture_output=True,
        text=True,
    )
    last = time.time()
    shutil.rmtree(tmp / f"send-{name}")
    if sent.returncode != 0:
        raise SystemExit(f"storescu failed:\n{sent.stdout}{sent.stderr}")
    return series_uid, started, last


def log_times(log_path: Path, series_uid: str, job_id: int) -> dict[str, float]:
    """Wall-clock instants of a job's steps from the node's log lines (asctime, ms)."""
    marks = {
        "complete": f"series {series_uid} complete",
        "analysed": f"job {job_id}: analysed series",
        "written": f"job {job_id} -> ",
    }
    found: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for name, text in marks.items():
            if name not in found and text in line:
                stamp, ms = line[:23].split(",")
                found[name] = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    return found


def steps_of(marks: dict[str, float], last: float, accepted: float, chain_s: float) -> dict[str, float]:
    """Seconds of each step between the last instance and the results accepted."""
    if set(marks) != {"complete", "analysed", "written"}:
        return {}
    return {
        "to series complete": marks["complete"] - last,
        "load series, chain": marks["analysed"] - marks["complete"],
        "of which the chain": chain_s,
        "build + write objects": marks["written"] - marks["analysed"],
        "deliver to storescp": accepted - marks["written"],
    }


def rss_of_steps(rss: RssSampler, marks: dict[str, float], last: float, accepted: float) -> dict[str, float]:
    """Peak VmRSS (MiB) of the node in each step's window (the 50 ms samples)."""
    if set(marks) != {"complete", "analysed", "written"}:
        return {}
    return {
        "to series complete": rss.peak_mib(last, marks["complete"]),
        "load series, chain": rss.peak_mib(marks["complete"], marks["analysed"]),
        "build + write objects": rss.peak_mib(marks["analysed"], marks["written"]),
        "deliver to storescp": rss.peak_mib(marks["written"], accepted + 0.1),
    }


def one_case(node, log_path: Path, dest: Destination, rss: RssSampler, tmp: Path, case, name: str) -> dict[str, Any]:
    """Send, wait for the destination to hold every result; the case's figures."""
    series_uid, started, last = send_case(node, tmp, case, name)
    job = wait_delivered(tmp / "node-e2e" / "node.sqlite3", series_uid, log_path, timeout=1800)
    accepted = dest.newest_mtime()
    summary = json.loads((tmp / "node-e2e" / "results" / str(job["id"]) / "summary.json").read_text())
    chain_s = summary.get("timings_s", {}).get("total", float("nan"))
    marks = log_times(log_path, series_uid, job["id"])
    return {
        "receive_s": last - started,
        "end_to_end_s": accepted - last,
        "steps_s": steps_of(marks, last, accepted, chain_s),
        "rss_steps_mib": rss_of_steps(rss, marks, last, accepted),
        "objects": job["kinds"],
        "decision": summary.get("decision"),
        "timings_s": summary.get("timings_s", {}),
        "rss_receive_mib": rss.peak_mib(started, last),
        "rss_analysis_mib": rss.peak_mib(last, accepted + 0.1),
        "vmhwm_mib": rss.status_kib("VmHWM") / 1024,
    }


def end_to_end(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The cold and the warm case through a fresh node, and its memory."""
    t0 = time.perf_counter()
    case = make_case(tmp / "case", args.slices, args.size, args.seed)
    print(f"(phantom CT {len(case)} x {args.size} x {args.size} written in {time.perf_counter() - t0:.0f} s)")
    dest = Destination(tmp / "pacs")
    node, log_path = start_full_node(tmp, dest.port, args.bundle, args.device)
    rss = RssSampler(node.pid)
    out: dict[str, Any] = {"rss_ready_mib": rss.status_kib("VmRSS") / 1024}
    try:
        for name in ("cold", "warm"):
            out[name] = one_case(node, log_path, dest, rss, tmp, case, name)
        out["vmhwm_mib"] = rss.status_kib("VmHWM") / 1024
    finally:
        rss.stop()
        node.terminate()
        bs.stop(node, log_path)
        dest.stop()
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {"cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}


def print_receive(rates: dict[str, Any], slices: int, size: int, repeat: int) -> None:
    print(f"\n1. Receive: {slices} images of {size}x{size} per association, fresh UIDs, median of {repeat}")
    print(f"   {'associations':<14}{'storescp img/s':>16}{'dicomnode img/s':>17}{'ratio':>8}")
    for n, r in rates.items():
        if n == "disk_floor_ms":
            continue
        fork = " (--fork)" if n != "1" else ""
        print(f"   {n + fork:<14}{r['storescp']:>16.0f}{r['node']:>17.0f}{r['ratio']:>8.2f}")
    if "disk_floor_ms" in rates:
        before, after = rates["disk_floor_ms"]
        print(
            f"   disk floor (pwrite + fdatasync of one image): {before:.2f} ms before, {after:.2f} ms after = at most "
            f"{2000 / (before + after):.0f} durable images/s on one association (storescp does not fsync)"
        )


def print_end_to_end(e2e: dict[str, Any]) -> None:
    cold, warm = e2e["cold"], e2e["warm"]
    print("\n2. Last instance received -> results accepted by the storescp destination")
    print(f"   {'case':<6}{'seconds':>9}{'of which chain':>16}{'other':>7}{'receive s':>11}  objects")
    for name, c in (("cold", cold), ("warm", warm)):
        kinds = ", ".join(f"{k} x{c['objects'].count(k)}" for k in sorted(set(c["objects"])))
        chain = c["timings_s"].get("total", float("nan"))
        print(
            f"   {name:<6}{c['end_to_end_s']:>9.2f}{chain:>16.2f}{c['end_to_end_s'] - chain:>7.2f}"
            f"{c['receive_s']:>11.2f}  {kinds} (decision {c['decision']})"
        )
    print("   (other: completion, loading the series, building, writing and sending the objects)")
    if cold.get("steps_s") and warm.get("steps_s"):
        print(f"   {'step (node log, 1 ms)':<24}{'cold s':>8}{'warm s':>8}{'peak RSS MiB cold':>19}{'warm':>6}")
        for step, seconds in cold["steps_s"].items():
            peaks = [c.get("rss_steps_mib", {}).get(step) for c in (cold, warm)]
            rss = "".join(f"{p:>{w}.0f}" for p, w in zip(peaks, (19, 6), strict=True)) if None not in peaks else ""
            print(f"   {step:<24}{seconds:>8.2f}{warm['steps_s'].get(step, float('nan')):>8.2f}{rss}")
    print("\n3. AI chain per stage (the node's own timings_s, results/<job>/summary.json)")
    print(f"   {'stage':<20}{'cold s':>8}{'warm s':>8}")
    for stage in cold["timings_s"]:
        print(f"   {stage:<20}{cold['timings_s'][stage]:>8.2f}{warm['timings_s'].get(stage, float('nan')):>8.2f}")
    print("\n4. Memory of the node process (MiB)")
    print(f"   VmRSS after start-up (Python, torch, bundle warmed up): {e2e['rss_ready_mib']:8.0f}")
    for name, c in (("cold", cold), ("warm", warm)):
        print(
            f"   {name}: peak VmRSS while receiving {c['rss_receive_mib']:6.0f}, while analysing and delivering "
            f"{c['rss_analysis_mib']:6.0f}"
        )
    print(f"   peak RSS (VmHWM): {e2e['vmhwm_mib']:.0f} MiB = {e2e['vmhwm_mib'] / 1024:.2f} GiB; {dominant(e2e)}")


def dominant(e2e: dict[str, Any]) -> str:
    """What makes the peak, from where it was reached."""
    base = e2e["rss_ready_mib"]
    receive = max(e2e["cold"]["rss_receive_mib"], e2e["warm"]["rss_receive_mib"])
    analysis = max(e2e["cold"]["rss_analysis_mib"], e2e["warm"]["rss_analysis_mib"])
    steps: dict[str, float] = {}
    for c in (e2e["cold"], e2e["warm"]):
        for step, mib in c.get("rss_steps_mib", {}).items():
            steps[step] = max(steps.get(step, 0.0), mib)
    if steps and analysis >= receive:
        top = max(steps, key=lambda k: steps[k])
        return (
            f"reached in the step '{top}' ({steps[top]:.0f} MiB sampled): {base:.0f} MiB resident before any "
            f"case, +{steps[top] - base:.0f} MiB in that step (per chain stage: scripts/benchmark_chain.py)"
        )
    if analysis >= receive:
        return (
            f"reached during the analysis: {base:.0f} MiB resident before any case, +{analysis - base:.0f} MiB "
            "for the chain (volume, masks, activations; per stage: scripts/benchmark_chain.py)"
        )
    return f"reached while receiving: {base:.0f} MiB before any case, +{receive - base:.0f} MiB receiving"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300, help="slices per series (default 300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    ap.add_argument("--repeat", type=int, default=3, help="sends per receiver and association count (median)")
    ap.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    ap.add_argument("--device", default="cpu", help="[pipeline] device of the node (default cpu)")
    ap.add_argument("--seed", type=int, default=2024, help="phantom seed of the end-to-end case")
    ap.add_argument("--skip-receive", action="store_true", help="only parts 2-4")
    ap.add_argument("--skip-end-to-end", action="store_true", help="only part 1")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's dcmtk")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine()}
    report["args"] = {"slices": args.slices, "size": args.size, "repeat": args.repeat, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_receive:
            report["receive"] = receive_rates(tmp, args.slices, args.size, args.repeat)
        if not args.skip_end_to_end:
            report["end_to_end"] = end_to_end(tmp, args)
    report["load_after"] = os.getloadavg()
    m = report["machine"]
    print(f"\n{report['date']}; {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}")
    print(
        f"load average before {' '.join(f'{x:.1f}' for x in m['load'])}, after "
        f"{' '.join(f'{x:.1f}' for x in report['load_after'])}"
    )
    if "receive" in report:
        print_receive(report["receive"], args.slices, args.size, args.repeat)
    if "end_to_end" in report:
        print(
            f"\nEnd-to-end case: phantom covid19 seed {args.seed}, {args.slices} x {args.size} x {args.size}, "
            f"bundle {args.bundle or 'models/covid-ct-demo'}, device {args.device}, one association"
        )
        print_end_to_end(report["end_to_end"])
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
