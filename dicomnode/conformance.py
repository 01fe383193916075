"""The facts of the DICOM conformance statement, read from the code that implements them.

``docs/conformance.md`` holds the statement in the structure PS3.2 prescribes; its tables
(between ``<!-- conformance:NAME -->`` and ``<!-- /conformance:NAME -->``) are rendered
here from the listener's presentation contexts, the transfer syntaxes, the delivery's
proposals, the SOP classes the writers make and the configuration's defaults, so the
document cannot drift from the code: ``tests/test_conformance.py`` fails when they
differ, and ``python -m dicomnode.conformance docs/conformance.md`` rewrites them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from .config import NodeSection
from .delivery import PROPOSED_TRANSFER_SYNTAXES
from .priors import QUERY_RETRIEVE_SOP_CLASSES
from .scp import ACCEPTED_TRANSFER_SYNTAXES, storage_contexts

#: SOP classes the node creates and sends (C-STORE SCU), by object kind of the config.
CREATED_SOP_CLASSES: dict[str, str] = {
    "sr": Comprehensive3DSRStorage,  # TID 1500
    "sc": SecondaryCaptureImageStorage,  # Grad-CAM overlays
    "seg": SegmentationStorage,  # the lung and its lesions
    "kos": KeyObjectSelectionDocumentStorage,
    "lobe_seg": SegmentationStorage,  # the five lobes
}
#: Listener limits of ``[node]`` that the statement quotes, with what each means.
LIMITS: tuple[tuple[str, str], ...] = (
    ("max_pdu", "largest PDU received (bytes); 0 = unlimited"),
    ("max_associations", "associations at once"),
    ("max_associations_per_address", "associations at once from one IP address (0 = no limit)"),
    ("max_associations_per_ae", "associations at once with one calling AE title (0 = no limit)"),
    ("reserved_associations", "of these, kept for the AE titles in reserved_for"),
    ("max_pending_connections", "TCP connections not yet associated"),
    ("association_timeout_s", "ARTIM: A-ASSOCIATE-RQ must arrive within (s)"),
    ("idle_timeout_s", "longest wait for the next message (s)"),
    ("message_timeout_s", "longest time one C-STORE may take to arrive (s)"),
    ("network_timeout_s", "as SCU: longest wait for the peer's answer (s)"),
    ("max_instance_mb", "largest dataset accepted in one C-STORE (MB)"),
)


def _name(uid: str) -> str:
    return UID(uid).name


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tables() -> dict[str, str]:
    """Every generated table of the statement, by name."""
    node = NodeSection()
    contexts = storage_contexts(node)
    scp_rows = sorted({(_name(str(c.abstract_syntax)), f"`{c.abstract_syntax}`") for c in contexts})
    defaults = node.model_dump()
    return {
        "scp-sop-classes": _table(("SOP class", "UID"), scp_rows),
        "scp-transfer-syntaxes": _table(
            ("Transfer syntax", "UID"), [(_name(ts), f"`{ts}`") for ts in ACCEPTED_TRANSFER_SYNTAXES]
        ),
        "scu-sop-classes": _table(
            ("Object (config kind)", "SOP class", "UID", "Transfer syntaxes proposed"),
            [
                (kind, _name(uid), f"`{uid}`", ", ".join(_name(ts) for ts in PROPOSED_TRANSFER_SYNTAXES))
                for kind, uid in CREATED_SOP_CLASSES.items()
            ],
        ),
        "qr-scu-sop-classes": _table(
            ("Message", "SOP class", "UID", "Level"),
            [(msg, _name(uid), f"`{uid}`", "STUDY") for msg, uid in QUERY_RETRIEVE_SOP_CLASSES.items()],
        ),
        "limits": _table(
            ("`[node]` setting", "default", "meaning"), [(f"`{key}`", f"{defaults[key]}", text) for key, text in LIMITS]
        ),
        "counts": f"The listener accepts {len(scp_rows)} SOP classes (Verification and every storage SOP class "
        f"pynetdicom lists) in {len(ACCEPTED_TRANSFER_SYNTAXES)} transfer syntaxes.",
    }


_BLOCK = re.compile(
    r"(<!-- conformance:(?P<name>[a-z-]+) -->)\n(?P<body>.*?)\n?(<!-- /conformance:(?P=name) -->)", re.S
)


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a statement's text, by name."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def rewrite(text: str) -> str:
    """``text`` with every generated block rendered anew."""
    fresh = tables()
    return _BLOCK.sub(lambda m: f"{m.group(1)}\n{fresh[m.group('name')]}\n{m.group(4)}", text)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dicomnode.conformance docs/conformance.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.write_text(rewrite(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
