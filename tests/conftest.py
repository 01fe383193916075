"""Shared fixtures: tiny random-weight models, free ports, polling waits."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"

# DCMTK answers each PDU late without it (Nagle's algorithm: ~40 ms per image).
os.environ.setdefault("TCP_NODELAY", "1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    """Path of a Debian tool the test needs, or skip with the package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (.ci/run installs dcmtk, dicom3tools and orthanc)")
    return path


def dicomnode_exe() -> str:
    """The installed CLI (the venv's when present, else the one on PATH)."""
    exe = VENV_BIN / "dicomnode"
    return str(exe) if exe.exists() else (shutil.which("dicomnode") or "dicomnode")


def make_tiny_bundle(out_dir: Path, with_unet: bool = False, seed: int = 0, with_cxr: bool = False) -> Path:
    """A random-weight bundle of the smallest networks: exercises every code path fast.

    Its outputs mean nothing; the card says so. ``with_cxr``: with a CXR model (pipeline.cxr)
    of the default classes.
    """
    import torch

    from pipeline.models import write_bundle
    from pipeline.nets import build_network, classifier_arch, cxr_arch, unet_arch

    torch.manual_seed(seed)
    archs = {
        "classifier": classifier_arch(4, layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32)),
        "locator": classifier_arch(2, layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32)),
    }
    if with_unet:
        archs["segmentation"] = unet_arch(features=(4, 8, 8, 16, 16, 4))
    if with_cxr:
        archs["cxr"] = cxr_arch(block_inplanes=(4, 8, 8, 16), input_size=64)
    nets = {role: build_network(arch) for role, arch in archs.items()}
    card = {
        "name": "tiny-random-test",
        "version": "0",
        "description": "Random weights for tests; outputs are meaningless.",
        "disclaimer": "TEST MODEL with random weights. Not for clinical use.",
        "trained_on_synthetic_data": True,
    }
    return write_bundle(out_dir, nets, archs, card)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="session")
def tiny_bundle_with_unet(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle_unet"), with_unet=True)


@pytest.fixture(scope="session")
def tiny_bundle_with_cxr(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle_cxr"), with_cxr=True)
