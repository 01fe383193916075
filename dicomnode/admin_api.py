"""The node's HTTP admin API: health, readiness, the tables of ``dicomnode status``,
retry and cancel, and Prometheus metrics. FastAPI (served by uvicorn in a thread of the
node), so the OpenAPI document is generated from the same code (``/openapi.json``,
browsable at ``/docs``).

Why FastAPI: typed query parameters with validation and an OpenAPI document for free,
on Starlette and uvicorn, which are small, well kept and run in-process; the node stays
one process with no extra service.

Security: off unless ``[http] port`` is set; loopback by default. Bound to any other
address it requires a bearer token, read from the environment variable ``token_env``
(never from a file of the repository, never logged). ``/healthz`` stays open (a process
probe); everything else needs the token when one is configured. Responses carry UIDs,
states and reasons, never patient names or IDs (the database holds none).
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from .delivery import DeliveryState
from .errors import ConfigError, QueueError
from .queue import JobState
from .series import SeriesState

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
DASHBOARD = Path(__file__).with_name("dashboard.html")


def token_for(http: Any) -> str | None:
    """The bearer token the API requires (None: none needed, on loopback without one)."""
    token = os.environ.get(http.token_env) or None
    if token is None and not http.is_loopback:
        raise ConfigError(
            "[http]",
            [
                f"bind_address {http.bind_address!r} is not loopback: set a token in the "
                f"environment variable {http.token_env} (the admin API can retry and "
                f"cancel jobs)"
            ],
        )
    return token


def build_app(node: Any, token: str | None) -> FastAPI:
    """The API over a started ``dicomnode.node.Node``."""
    audit = getattr(node, "audit_record", None)  # admin actions go to the audit trail
    app = FastAPI(
        title="COVID-CT-Node admin API",
        version=_version(),
        description="Health, queue and delivery state, retry/cancel, Prometheus metrics. "
        "UIDs and states only: no patient data.",
    )

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(
                status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    guarded = [Depends(authorised)]
    _add_health_routes(app, node, guarded)
    _add_state_routes(app, node, guarded)
    _add_action_routes(app, node, guarded, audit)
    return app


def _add_health_routes(app: FastAPI, node: Any, guarded: list[Any]) -> None:
    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", summary="Ready to take and analyse series", dependencies=guarded)
    def readyz() -> JSONResponse:
        checks = readiness(node)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", dependencies=guarded)
    def metrics() -> Response:
        return Response(node.metrics.render(), media_type=PROMETHEUS_TEXT)


def _add_state_routes(app: FastAPI, node: Any, guarded: list[Any]) -> None:
    """Series, jobs, deliveries and a job's timeline (states are the modules' enums)."""

    @app.get("/api/series", summary="Series, newest first", dependencies=guarded)
    def series(
        state: SeriesState | None = None, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)
    ) -> dict:
        return _page(
            node,
            "SELECT s.series_uid, s.study_uid, s.state, s.reason, s.instance_count, s.generation, "
            "s.first_received, s.last_received, s.completed, (SELECT MAX(id) FROM jobs j WHERE "
            "j.series_uid=s.series_uid) AS job_id FROM series s",
            "s.state",
            _value(state),
            "s.last_received DESC",
            limit,
            offset,
        )

    @app.get("/api/jobs", summary="Jobs, newest first", dependencies=guarded)
    def jobs(
        state: JobState | None = None, limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)
    ) -> dict:
        page = _page(
            node,
            "SELECT id, series_uid, study_uid, generation, state, reason, attempts, lease_until, "
            "not_before, urgent, created, updated FROM jobs",
            "state",
            _value(state),
            "id DESC",
            limit,
            offset,
        )
        from .commands.status import job_decision

        for item in page["items"]:
            item["decision"] = job_decision(node.paths["results"] / str(item["id"]))
        return page

    @app.get("/api/deliveries", summary="Object deliveries, newest first", dependencies=guarded)
    def deliveries(
        state: DeliveryState | None = None,
        job_id: int | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict:
        where = [] if job_id is None else [("job_id", job_id)]
        return _page(
            node,
            "SELECT job_id, destination, sop_uid, kind, state, attempts, first_try, next_try, "
            "last_error, updated FROM deliveries",
            "state",
            _value(state),
            "job_id DESC, kind",
            limit,
            offset,
            where,
        )

    @app.get("/api/jobs/{job_id}/timeline", summary="What happened to one job, in order", dependencies=guarded)
    def timeline(job_id: int) -> dict:
        return job_timeline(node, job_id)

    @app.get("/dashboard", summary="The web dashboard (its data comes from this API)", include_in_schema=False)
    def dashboard() -> Response:
        return Response(DASHBOARD.read_bytes(), media_type="text/html; charset=utf-8")


def _add_action_routes(app: FastAPI, node: Any, guarded: list[Any], audit: Any) -> None:
    """An admin's retry and cancel (the queue and delivery check what is allowed)."""

    @app.post("/api/jobs/{job_id}/retry", summary="Queue a failed or skipped job again", dependencies=guarded)
    def retry_job(job_id: int) -> dict:
        return _action(lambda: node.queue.requeue(job_id, "retried by an admin"), job_id, "queued", audit)

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued job", dependencies=guarded)
    def cancel_job(job_id: int) -> dict:
        return _action(lambda: node.queue.cancel(job_id, "cancelled by an admin"), job_id, "skipped", audit)

    @app.post(
        "/api/jobs/{job_id}/deliveries/retry", summary="Send a job's failed deliveries again", dependencies=guarded
    )
    def retry_deliveries(job_id: int) -> dict:
        def run() -> None:
            if node.delivery.retry_failed(job_id) == 0:
                raise QueueError(f"job {job_id} has no failed delivery")
            node.delivery.kick()

        return _action(run, job_id, "delivering", audit)


def _value(state: Enum | None) -> str | None:
    return None if state is None else str(state.value)


def job_timeline(node: Any, job_id: int) -> dict:
    """Received, complete, queued, analysed (with stage seconds), delivered per destination."""
    import json

    rows = node.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
    if not rows:
        raise HTTPException(status_code=404, detail=f"job {job_id} does not exist")
    job = dict(rows[0])
    job.pop("instances", None)
    events: list[dict[str, Any]] = []
    series = node.db.query(
        "SELECT first_received, last_received, completed, instance_count FROM series WHERE series_uid=?",
        (job["series_uid"],),
    )
    if series:
        s = series[0]
        events.append({"at": s["first_received"], "what": "first instance received"})
        events.append({"at": s["last_received"], "what": f"last instance received ({s['instance_count']} in all)"})
        if s["completed"]:
            events.append({"at": s["completed"], "what": "series complete (quiet period over)"})
    events.append(
        {
            "at": job["created"],
            "what": f"job queued (generation {job['generation']}"
            + (f", urgent: {job['urgent']})" if job.get("urgent") else ")"),
        }
    )
    stage_seconds = None
    try:
        summary = json.loads((node.paths["results"] / str(job_id) / "summary.json").read_text())
        stage_seconds = {k: v for k, v in summary.get("timings_s", {}).items() if k != "total"}
        events.append(
            {
                "at": (node.paths["results"] / str(job_id) / "summary.json").stat().st_mtime,
                "what": f"analysed: decision {summary.get('decision')}",
            }
        )
    except (OSError, ValueError, AttributeError):
        pass
    for d in node.db.query(
        "SELECT destination, state, COUNT(*) AS n, MIN(first_try) AS first_try, "
        "MAX(updated) AS updated, MAX(last_error) AS last_error FROM deliveries WHERE job_id=? "
        "GROUP BY destination, state",
        (job_id,),
    ):
        what = f"{d['n']} object(s) {d['state']} to {d['destination']}"
        events.append({"at": d["updated"], "what": what + (f" ({d['last_error']})" if d["last_error"] else "")})
    reason = f": {job['reason']}" if job["reason"] else ""
    events.append({"at": job["updated"], "what": f"job {job['state']}{reason}"})
    events.sort(key=lambda e: e["at"] or 0)
    return {"job": job, "events": events, "stage_seconds": stage_seconds}


def _version() -> str:
    from . import __version__

    return __version__


def _page(
    node: Any,
    select: str,
    state_column: str,
    state: str | None,
    order: str,
    limit: int,
    offset: int,
    where: list[tuple[str, Any]] | None = None,
) -> dict:
    conditions = list(where or [])
    if state is not None:
        conditions.append((state_column, state))
    clause = (" WHERE " + " AND ".join(f"{c}=?" for c, _ in conditions)) if conditions else ""
    params = [v for _, v in conditions]
    total = node.db.query(f"SELECT COUNT(*) AS n FROM ({select}{clause})", params)[0]["n"]
    rows = node.db.query(f"{select}{clause} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset])
    return {"total": total, "limit": limit, "offset": offset, "items": [dict(r) for r in rows]}


def _action(run: Any, job_id: int, new_state: str, audit: Any = None) -> dict:
    try:
        run()
    except QueueError as e:
        if audit is not None:
            audit("admin", "refused", action=f"job -> {new_state}", job_id=job_id, reason=str(e))
        raise HTTPException(status_code=409, detail=str(e)) from None
    log.info("admin: job %d -> %s", job_id, new_state)
    if audit is not None:
        audit("admin", "success", action=f"job -> {new_state}", job_id=job_id)
    return {"job_id": job_id, "state": new_state}


def readiness(node: Any) -> dict[str, dict[str, Any]]:
    """Each readiness check: database writable, storage above its reserve, model bundle
    loaded and warmed up, listener accepting."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        with node.db.transaction() as conn:
            conn.execute("UPDATE meta SET value=value WHERE key='schema_version'")
        checks["database"] = {"ok": True}
    except Exception as e:  # any failure here is the answer
        checks["database"] = {"ok": False, "why": f"{type(e).__name__}: {e}"}
    st = os.statvfs(node.store.root)
    free = st.f_bavail * st.f_frsize
    checks["storage"] = {
        "ok": free >= node.store.min_free_bytes,
        "free_bytes": free,
        "reserve_bytes": node.store.min_free_bytes,
    }
    info = node.bundle_info
    checks["model_bundle"] = (
        {"ok": True, "name": info.name, "version": info.version, "sha256": info.sha256}
        if info is not None
        else {"ok": False, "why": node.bundle_error or "warming up"}
    )
    try:
        with socket.create_connection(
            ("127.0.0.1" if node.cfg.node.bind_address in ("0.0.0.0", "::") else node.cfg.node.bind_address, node.port),
            timeout=2,
        ):
            pass
        checks["listener"] = {"ok": True, "port": node.port}
    except OSError as e:
        checks["listener"] = {"ok": False, "why": str(e)}
    return checks


class HttpServer:
    """uvicorn serving the app in a daemon thread; ``stop`` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )
        self.host, self.port = host, port
        self.thread = threading.Thread(target=self.server.run, name="admin-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "HttpServer":
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        raise OSError(f"the admin API could not listen on {self.url}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
