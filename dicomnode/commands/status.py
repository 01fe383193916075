"""``dicomnode status``: recent series, jobs and deliveries, with states and reasons.

Each analysed job also shows the decision its report states (from the job's
``results/<job>/summary.json``): a class, "indeterminate" or "out_of_domain".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ._args import EXIT_USAGE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dicomnode.config import DEFAULT_CONFIG_PATH

    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"node configuration whose data folder to read (default {DEFAULT_CONFIG_PATH})",
    )
    where.add_argument("--data-dir", type=Path, help="data folder of the node")
    parser.add_argument("--limit", type=int, default=20, help="rows per table (default 20)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--audit",
        type=int,
        default=0,
        metavar="N",
        help="also show the last N events of the audit trail (dicomnode.audit)",
    )


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def collect(db_path: Path, limit: int) -> dict[str, Any]:
    """The status tables as plain dicts (newest first)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        series = [
            dict(r)
            for r in conn.execute(
                "SELECT s.series_uid, s.study_uid, s.state, s.reason, s.instance_count, s.last_received, s.completed, "
                "s.generation, j.id AS job_id, j.state AS job_state FROM series s LEFT JOIN jobs j "
                "ON j.id=(SELECT MAX(id) FROM jobs WHERE series_uid=s.series_uid) "
                "ORDER BY s.last_received DESC LIMIT ?",
                (limit,),
            )
        ]
        # A database of a node older than schema 4 has no urgent column (read-only here: not migrated).
        has_urgent = any(r["name"] == "urgent" for r in conn.execute("PRAGMA table_info(jobs)"))
        jobs = [
            dict(r)
            for r in conn.execute(
                "SELECT id, series_uid, generation, state, reason, attempts, lease_until, created, updated"
                + (", urgent" if has_urgent else ", NULL AS urgent")
                + " FROM jobs ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]
        deliveries = [
            dict(r)
            for r in conn.execute(
                "SELECT job_id, destination, state, COUNT(*) AS objects, MAX(attempts) AS attempts, "
                "MIN(CASE WHEN state='pending' THEN next_try END) AS next_try, MAX(last_error) AS last_error, "
                "MAX(updated) AS updated FROM deliveries GROUP BY job_id, destination, state "
                "ORDER BY job_id DESC, destination LIMIT ?",
                (limit,),
            )
        ]
        pending = conn.execute("SELECT COUNT(*) FROM deliveries WHERE state='pending'").fetchone()[0]
        priors = _prior_studies(conn, limit)
    finally:
        conn.close()
    results = _results_root(db_path)
    for job in jobs:
        job["decision"] = job_decision(results / str(job["id"]))
    return {
        "database": str(db_path),
        "series": series,
        "jobs": jobs,
        "deliveries": deliveries,
        "pending_deliveries": pending,
        "prior_studies": priors,
    }


def _prior_studies(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The prior studies asked for ([priors]), newest first; none in a database older than
    schema 6 (read-only here: not migrated)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='prior_studies'").fetchone():
        return []
    return [
        dict(r)
        for r in conn.execute(
            "SELECT study_uid, for_study_uid, study_date, state, reason FROM prior_studies "
            "ORDER BY updated DESC LIMIT ?",
            (limit,),
        )
    ]


def _results_root(db_path: Path) -> Path:
    from dicomnode.node import data_paths

    return data_paths(db_path.parent)["results"]


def job_decision(job_dir: Path) -> str | None:
    """The decision in a job's summary.json; None before the analysis wrote one (or when
    it cannot be read: status must show the tables even then)."""
    try:
        summary = json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    return summary.get("decision")


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    out = [f"{title}:"]
    if not rows:
        return f"{title}: none"
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(out)


def render(data: dict[str, Any]) -> str:
    parts = [f"database {data['database']}"]
    parts.append(
        _table(
            "series",
            ["series UID", "instances", "state", "job", "reason"],
            [
                [
                    s["series_uid"],
                    s["instance_count"],
                    s["state"],
                    f"{s['job_id']} {s['job_state']}" if s["job_id"] else None,
                    s["reason"],
                ]
                for s in data["series"]
            ],
        )
    )
    parts.append(
        _table(
            "jobs",
            ["job", "series UID", "state", "decision", "attempts", "priority", "reason"],
            [
                [
                    j["id"],
                    j["series_uid"],
                    j["state"],
                    j.get("decision"),
                    j["attempts"],
                    f"urgent ({j['urgent']})" if j.get("urgent") else "routine",
                    j["reason"],
                ]
                for j in data["jobs"]
            ],
        )
    )
    parts.append(
        _table(
            "deliveries",
            ["job", "destination", "state", "objects", "attempts", "next try", "last error"],
            [
                [
                    d["job_id"],
                    d["destination"],
                    d["state"],
                    d["objects"],
                    d["attempts"],
                    _when(d["next_try"]),
                    d["last_error"],
                ]
                for d in data["deliveries"]
            ],
        )
    )
    parts.append(f"pending deliveries: {data['pending_deliveries']}")
    if data.get("prior_studies"):
        parts.append(
            _table(
                "prior studies ([priors])",
                ["prior study UID", "for study UID", "date", "state", "reason"],
                [
                    [x["study_uid"], x["for_study_uid"], x["study_date"], x["state"], x["reason"]]
                    for x in data["prior_studies"]
                ],
            )
        )
    if "audit" in data:
        lines = [
            f"  {e.get('time', '?')}  {e.get('event', '?')}  {e.get('outcome', '')}  "
            + "  ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "event", "outcome", "event_id"))
            for e in data["audit"]
        ]
        parts.append("audit trail (oldest first):\n" + ("\n".join(lines) if lines else "  none"))
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    from dicomnode.config import DEFAULT_CONFIG_PATH, load_config
    from dicomnode.errors import ConfigError
    from dicomnode.node import DB_FILE

    if args.data_dir is not None:
        data_dir = args.data_dir
    else:
        try:
            data_dir = load_config(args.config or DEFAULT_CONFIG_PATH, check_filesystem=False).node.data_dir
        except ConfigError as e:
            print(f"dicomnode status: {e}", file=sys.stderr)
            return EXIT_USAGE
    db_path = Path(data_dir) / DB_FILE
    if not db_path.is_file():
        print(
            f"dicomnode status: no node database at {db_path} (has the node run with this data folder?)",
            file=sys.stderr,
        )
        return 1
    data = collect(db_path, args.limit)
    if getattr(args, "audit", 0) > 0:
        from dicomnode.audit import read_tail

        data["audit"] = read_tail(Path(data_dir) / "audit", args.audit)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0
