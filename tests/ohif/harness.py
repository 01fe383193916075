"""Run OHIF Viewer v3 in Debian's chromium against a study in Orthanc, from Python.

Shared by tests/test_ohif_viewer.py and scripts/make_viewer_screenshots.py. Import as
``from ohif.harness import ...`` with tests/ on sys.path (pytest puts it there).

What it needs (``viewer_missing_reason()`` says which is absent): Debian's chromium,
node >= 20, and what tests/ohif/setup.sh fetches (the OHIF build in tests/.ohif/dist and
playwright-core in tests/ohif/node_modules).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.js"
PLAYWRIGHT = HERE / "node_modules" / "playwright-core" / "package.json"
OHIF_DIST = HERE.parent / ".ohif" / "dist"
#: The browser the driver starts; CHROMIUM overrides it on other systems.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


#: playwright-core 1.65's "engines" field.
MIN_NODE_MAJOR = 20


def _node_major() -> int:
    """Major version of the node on PATH (0 when it cannot say)."""
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


class ViewerError(RuntimeError):
    """The driver could not run (node missing, crashed, printed no JSON)."""


def viewer_missing_reason() -> str | None:
    """Why the viewer cannot be driven here (for ``pytest.skip``), or None when it can."""
    if not Path(CHROMIUM).is_file():
        return f"chromium not found at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)"
    if shutil.which("node") is None:
        return "node not found (Node.js >= 20 with npm); needed to drive chromium"
    major = _node_major()
    if major < MIN_NODE_MAJOR:
        return f"node {major} is too old: playwright-core needs Node.js >= {MIN_NODE_MAJOR}"
    if not (OHIF_DIST / "index.html").is_file():
        return f"OHIF build missing in {OHIF_DIST}: run tests/ohif/setup.sh (needs the npm registry once)"
    if not PLAYWRIGHT.is_file():
        return "playwright-core missing in tests/ohif/node_modules: run tests/ohif/setup.sh"
    return None


def dicom_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory (what Orthanc's POST /instances takes)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def upload(pacs: Any, datasets: Iterable[Dataset]) -> int:
    """Store datasets in Orthanc over REST (``pacs`` from tests/orthanc.py); returns the count."""
    count = 0
    for dataset in datasets:
        pacs.upload(dicom_bytes(dataset))
        count += 1
    return count


def run_driver(options: Mapping[str, Any], timeout_s: float = 150.0) -> dict[str, Any]:
    """Run tests/ohif/driver.js with ``options`` (see its header) and return its JSON report.

    Raises ViewerError when node fails or prints no report; a report with ``ok`` false
    (a step timed out, the page broke) is returned for the caller to judge.
    """
    opts = {"chromium": CHROMIUM, **options}
    try:
        proc = subprocess.run(
            ["node", str(DRIVER), json.dumps(opts)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=HERE,
        )
    except subprocess.TimeoutExpired as exc:
        raise ViewerError(f"OHIF driver ran past {timeout_s:.0f} s; stderr: {exc.stderr!r}") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ViewerError(
            f"OHIF driver printed no JSON report (exit {proc.returncode}); "
            f"stderr: {proc.stderr[-2000:]!r}; stdout: {proc.stdout[-1000:]!r}"
        )
    return json.loads(lines[-1])
