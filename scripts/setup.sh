#!/usr/bin/env bash
# Sets up a fresh clone: Debian peers (when root and missing), the virtual environment
# in .venv with the project installed editable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v storescu >/dev/null || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
command -v Orthanc >/dev/null || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v openssl >/dev/null || need_apt+=(openssl)  # the TLS tests make their certificates
# PixelMed's DICOM and SR validators, the second validator of our objects (tests/test_pixelmed.py).
[ -e /usr/share/java/pixelmed.jar ] || need_apt+=(libpixelmed-java)
command -v java >/dev/null || need_apt+=(default-jre-headless)
# The broker of the scale-out test (tests/test_scale_out.py) and of [broker] deployments.
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ "${WITH_BROWSER:-0}" = 1 ]; then command -v chromium >/dev/null || need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: optional Debian packages missing (tests that need them are skipped): ${need_apt[*]}" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in pyproject.toml: 2.13.0 is the CPU build; a newer one pulls CUDA.
.venv/bin/python -m pip install -q -e '.[test]'
# pyradiomics 3.0.1 builds its C extension against the installed numpy; its own build
# isolation fails on Python 3.11, hence --no-build-isolation after numpy is in.
if ! .venv/bin/python -c "import radiomics" 2>/dev/null; then
  .venv/bin/python -m pip install -q setuptools wheel
  .venv/bin/python -m pip install -q --no-build-isolation pyradiomics==3.0.1
fi
echo "setup: done (.venv/bin/dicomnode is the CLI)"
