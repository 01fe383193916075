"""``dicomnode demo``: what the README's first command shows a newcomer."""

from __future__ import annotations

import json
import subprocess
import sys

from dicomnode.commands.demo import _ranges, format_summary

from conftest import REPO_ROOT
from node_helpers import NodeProcess


def test_slice_ranges_read_like_a_radiologist_names_them() -> None:
    assert _ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert _ranges([]) == "none"


def test_demo_sends_a_phantom_and_prints_the_report(tmp_path, tiny_bundle) -> None:
    node = NodeProcess(tmp_path / "data", tiny_bundle, quiet_seconds=1.0).start()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicomnode.cli",
                "demo",
                "--config",
                str(node.config),
                "--port",
                str(node.port),
                "--data-dir",
                str(node.data_dir),
                "--slices",
                "24",
                "--size",
                "96",
                "--timeout",
                "240",
                "--json",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        node.stop()
    assert done.returncode == 0, done.stdout + done.stderr + node.tail()
    start = done.stdout.index("{")
    summary = json.loads(done.stdout[start : done.stdout.index("\n}", start) + 2])
    assert set(summary["probabilities"]) == {"non_pneumonia", "cap", "influenza", "covid19"}
    assert summary["model"]["name"] == "tiny-random-test"
    assert "Structured report:" in done.stdout
    # what the README promises: the readable form carries the disclaimer
    assert "Not for clinical use" in format_summary(summary)


def test_demo_without_a_node_says_so(tmp_path) -> None:
    from conftest import free_port
    from node_helpers import write_test_config

    config = write_test_config(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomnode.cli",
            "demo",
            "--config",
            str(config),
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
            "--slices",
            "20",
            "--size",
            "64",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Is 'dicomnode serve' running?" in done.stderr
