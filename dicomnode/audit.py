"""The audit trail: who sent what, what the node did with it, who got the results, and
what admins did; append-only JSON lines with UIDs only, in the spirit of the DICOM audit
messages (PS3.15 Annex A.5).

One line per event in ``<data_dir>/audit/audit.jsonl``, rotated by size by the standard
library's ``RotatingFileHandler`` (``audit.jsonl.1`` ... kept). Each line holds ``time``
(UTC, ISO 8601), ``event`` (below), ``event_id`` (the DCM code of the matching PS3.15
audit message), ``outcome`` and the event's own fields: AE titles, peer addresses, UIDs,
counts, states. Never patient names or IDs; peer-supplied text is escaped and cut like
in the logs.

Events: ``association`` (accepted or refused, and why), ``instances_received`` (a series
complete: how many instances, from which senders), ``job`` (a job's final state),
``delivery`` (objects sent to or failed at a destination), ``admin`` (retry, cancel),
``purge`` (a delivered series deleted by housekeeping).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
from pathlib import Path
from typing import Any

from .logsafe import peer_text

#: event -> (DCM code, meaning) of the PS3.15 A.5 audit message it stands for.
EVENT_IDS: dict[str, tuple[str, str]] = {
    "association": ("110114", "User Authentication"),
    "instances_received": ("110104", "DICOM Instances Transferred"),
    "job": ("110100", "Application Activity"),
    "delivery": ("110104", "DICOM Instances Transferred"),
    "admin": ("110100", "Application Activity"),
    "purge": ("110103", "DICOM Instances Accessed (deleted)"),
    "priors": ("110112", "Query"),
}
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class AuditLog:
    """Writes audit events; safe from any thread. ``record`` never raises: an audit line
    that cannot be written is logged, the node goes on."""

    def __init__(self, folder: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "audit.jsonl"
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        code, meaning = EVENT_IDS.get(event, ("110100", "Application Activity"))
        line = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "event": event,
            "event_id": f"DCM {code} {meaning}",
            "outcome": outcome,
        }
        line.update({k: (peer_text(v, 200) if isinstance(v, str) else v) for k, v in fields.items()})
        try:
            text = json.dumps(line, sort_keys=False, default=str)
            # handle() takes the handler's own lock: one whole line per event, any thread.
            self._handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
        except Exception:  # the audit must not stop the node
            logging.getLogger(__name__).exception("audit line not written (%s)", event)

    def close(self) -> None:
        self._handler.close()


def read_tail(folder: Path, count: int) -> list[dict[str, Any]]:
    """The last ``count`` audit events (newest last), from the current file and, when it
    holds fewer, the rotated ones."""
    lines: list[str] = []
    path = folder / "audit.jsonl"
    for candidate in [path] + [path.with_name(f"audit.jsonl.{i}") for i in range(1, BACKUPS + 1)]:
        if len(lines) >= count or not candidate.is_file():
            break
        lines = candidate.read_text(encoding="utf-8").splitlines() + lines
    out = []
    for text in lines[-count:]:
        try:
            out.append(json.loads(text))
        except ValueError:
            out.append({"event": "unreadable", "line": text[:200]})
    return out
