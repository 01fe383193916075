"""Helpers of the node's tests: small series, real DCMTK peers, a node subprocess.

Everything runs on 127.0.0.1 with free ports and writes only under the test's tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.types import CTVolume

from conftest import REPO_ROOT, free_port, require_tool, wait_for

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def small_volume(n_slices: int = 20, size: int = 64, seed: int = 0) -> CTVolume:
    """A random CT volume (no anatomy): enough for storage and assembly tests."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(-500, 300, (n_slices, size, size)).astype(np.float32)
    return CTVolume(hu=hu, spacing_mm=(2.0, 0.8, 0.8))


def head_volume(n_slices: int = 20, size: int = 64) -> CTVolume:
    """A head-like CT (skull, brain, a little sinus air): no lung anywhere."""
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size]
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    r = np.sqrt(((y - size / 2) / (0.4 * size)) ** 2 + ((x - size / 2) / (0.34 * size)) ** 2)
    hu[r < 1.0] = 900.0
    hu[r < 0.9] = 35.0
    hu[(r < 0.15) & (z > 0.8 * n_slices)] = -900.0
    return CTVolume(hu=hu, spacing_mm=(5.0, 3.5, 3.5))


def write_series(out_dir: Path, n_slices: int = 20, size: int = 64, seed: int = 0, **kwargs):
    """A CT series as files (dicomnode.synthetic.write_ct_series)."""
    from dicomnode.synthetic import write_ct_series

    return write_ct_series(small_volume(n_slices, size, seed), out_dir, **kwargs)


def storescu(
    port: int,
    files: Sequence[Path],
    called_ae: str = "COVIDNODE",
    calling_ae: str = "SCANNER",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port), *[str(f) for f in files]],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def echoscu(port: int, called_ae: str = "COVIDNODE", calling_ae: str = "SCANNER") -> subprocess.CompletedProcess:
    exe = require_tool("echoscu")
    return subprocess.run(
        [exe, "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )


def terminate(proc: subprocess.Popen | None, timeout_s: float = 10) -> int | None:
    """SIGTERM a test's server process, SIGKILL it after ``timeout_s``; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class StoreSCP:
    """DCMTK storescp receiving into a folder (a destination PACS)."""

    def __init__(self, out_dir: Path, ae_title: str = "PACS", port: int | None = None) -> None:
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        exe = require_tool("storescp")
        # -uf: file names from SOP Instance UIDs, so a re-sent object lands on the same file.
        self.proc = subprocess.Popen(
            [exe, "-aet", self.ae_title, "-od", str(self.out_dir), "-uf", "-v", str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        wait_for(
            lambda: echoscu(self.port, called_ae=self.ae_title).returncode == 0, 20, what="storescp to answer C-ECHO"
        )
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.append(line.rstrip())

    def received_sop_uids(self) -> list[str]:
        """SOP Instance UID of each C-STORE storescp accepted, repeats included
        (from its 'storing DICOM file: <dir>/<MODALITY>.<UID>' log lines)."""
        uids = []
        for line in list(self._log):
            if "storing DICOM file:" in line:
                name = Path(line.split("storing DICOM file:", 1)[1].strip()).name
                uids.append(name.split(".", 1)[1])
        return uids

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


TEST_CONFIG = """
[node]
ae_title = "COVIDNODE"
min_free_mb = 0
[selection]
min_slices = 16
max_slice_thickness_mm = 0   # small phantoms have thick slices
[pipeline]
device = "cpu"
max_overlays = 2
[delivery]
backoff_base_seconds = 0.5
backoff_max_seconds = 2
poll_seconds = 0.5
connect_timeout_seconds = 3
"""


def write_test_config(folder: Path, text: str = TEST_CONFIG) -> Path:
    """A node config for tests: quick retries, rules fit for small phantoms."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node-test.toml"
    path.write_text(text)
    return path


class _CliProcess:
    """A ``dicomnode`` command as a subprocess, its output collected line by line."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def _spawn(self) -> None:
        self.log = []
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_line(self, text: str, timeout: float, what: str, exited: str) -> None:
        """Until a line holds ``text``; AssertionError with the log when the process exits."""
        proc = self.proc
        assert proc is not None
        wait_for(lambda: any(text in line for line in self.log) or proc.poll() is not None, timeout, what=what)
        if proc.poll() is not None:
            raise AssertionError(f"{exited}:\n" + "\n".join(self.log[-40:]))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        return terminate(self.proc, timeout_s=60)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log[-n:])


class NodeProcess(_CliProcess):
    """``dicomnode serve`` as a subprocess, waited for by its 'listening on' line."""

    def __init__(
        self,
        data_dir: Path,
        bundle: Path | None,
        destinations: Sequence[str] = (),
        quiet_seconds: float = 1.0,
        config: Path | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.config = config if config is not None else write_test_config(data_dir.parent / "config")
        args = [
            sys.executable,
            "-m",
            "dicomnode.cli",
            "serve",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--data-dir",
            str(data_dir),
            "--quiet-seconds",
            str(quiet_seconds),
        ]
        super().__init__(args, env)
        self.args += ["--config", str(self.config)]
        if bundle is not None:
            self.args += ["--bundle", str(bundle)]
        for d in destinations:
            self.args += ["--destination", d]
        self.args += list(extra_args)

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self._spawn()
        self._wait_for_line("listening on", timeout, "the node to listen", "node exited at start-up")
        return self

    def status(self) -> dict:
        from dicomnode.commands.status import collect

        return collect(self.data_dir / "node.sqlite3", 100)

    def jobs(self) -> list[dict]:
        return self.status()["jobs"]


def dciodvfy_errors(path: Path) -> list[str]:
    """'Error' lines dciodvfy prints for a file (an empty list is a valid object)."""
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


class WorkerProcess(_CliProcess):
    """``dicomnode worker`` as a subprocess, waited for by its 'ready' line."""

    def __init__(
        self, config: Path, data_dir: Path, bundle: Path | None, name: str, extra_args: Sequence[str] = ()
    ) -> None:
        self.name = name
        args = [sys.executable, "-m", "dicomnode.cli", "worker", "--config", str(config)]
        args += ["--data-dir", str(data_dir), "--name", name, *extra_args]
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        super().__init__(args)

    def start(self) -> "WorkerProcess":
        self._spawn()
        return self

    def wait_ready(self, timeout: float = 120.0) -> "WorkerProcess":
        self._wait_for_line(" ready: ", timeout, f"{self.name} to be ready", f"{self.name} exited at start-up")
        return self


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, nothing saved to disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = require_tool("redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 20, what="redis-server to answer PING")
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
