"""``pipeline/`` never imports DICOM code (DESIGN.md): checked at run time and in the sources."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
FORBIDDEN = ("pydicom", "pynetdicom", "highdicom", "dicomnode")


def _modules() -> list[str]:
    names = []
    for path in sorted(PIPELINE.rglob("*.py")):
        rel = path.relative_to(PIPELINE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


#: Run in a fresh interpreter: makes the DICOM packages unimportable, then imports every
#: pipeline module. MONAI imports nibabel, which imports pydicom only if it is there
#: (optional), so a third-party optional import is fine; a pipeline import is not.
_BLOCKING_IMPORTER = """
import importlib, importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{fullname} is blocked: pipeline must not import DICOM code")
        return None

sys.meta_path.insert(0, Block())
for name in MODULES:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN and sys.modules[m] is not None)))
"""


def test_importing_every_pipeline_module_loads_no_dicom_package() -> None:
    modules = _modules()
    assert "pipeline.chain" in modules and "pipeline.preprocess" in modules
    code = f"FORBIDDEN = {FORBIDDEN!r}\nMODULES = {modules!r}\n" + _BLOCKING_IMPORTER
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PIPELINE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"pipeline imports DICOM code: {loaded}"


def test_no_dicom_import_statement_in_pipeline_sources() -> None:
    pattern = re.compile(r"^\s*(?:from|import)\s+(" + "|".join(FORBIDDEN) + r")\b", re.MULTILINE)
    offenders = [
        f"{path.relative_to(PIPELINE.parent)}: {m.group(0).strip()}"
        for path in sorted(PIPELINE.rglob("*.py"))
        for m in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
