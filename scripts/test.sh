#!/usr/bin/env bash
# The test suite: unit tests and tests against real DICOM peers (DCMTK, dicom3tools,
# Orthanc, OHIF in Chromium) on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export TCP_NODELAY=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
