"""A small FHIR receiver on loopback for the tests: a real HTTP server that takes
transaction Bundles at its base URL, stores each resource with a server id, honours
``ifNoneExist`` (identifier=system|value) so a retried POST creates nothing twice, and
answers a transaction-response Bundle. ``GET /<Type>`` returns what it holds."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FhirReceiver:
    def __init__(self, port: int = 0, token: str = "") -> None:
        self.token = token
        self.resources: dict[str, list[dict]] = {}
        self.posts = 0
        self.failing = False  # answer 503 (a server under maintenance)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.posts += 1
                if receiver.token and self.headers.get("Authorization") != f"Bearer {receiver.token}":
                    return self._send(401, _outcome("missing or wrong bearer token"))
                if receiver.failing:
                    return self._send(503, _outcome("under maintenance"))
                try:
                    bundle = json.loads(body)
                    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
                except (ValueError, KeyError, AssertionError):
                    return self._send(400, _outcome("not a transaction Bundle"))
                self._send(200, receiver.store(bundle))

            def do_GET(self):
                kind = self.path.strip("/").split("?")[0]
                with receiver._lock:
                    found = list(receiver.resources.get(kind, []))
                self._send(
                    200,
                    {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "total": len(found),
                        "entry": [{"resource": r} for r in found],
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def store(self, bundle: dict) -> dict:
        answers = []
        with self._lock:
            for entry in bundle.get("entry", []):
                res, req = entry["resource"], entry.get("request", {})
                existing = self._match(res["resourceType"], req.get("ifNoneExist"))
                if existing is not None:
                    answers.append(
                        {"response": {"status": "200 OK", "location": f"{res['resourceType']}/{existing['id']}"}}
                    )
                    continue
                res = dict(res, id=str(uuid.uuid4()))
                self.resources.setdefault(res["resourceType"], []).append(res)
                where = f"{res['resourceType']}/{res['id']}"
                answers.append({"response": {"status": "201 Created", "location": where}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _match(self, kind: str, condition: str | None) -> dict | None:
        if not condition or not condition.startswith("identifier="):
            return None
        system, _, value = condition.removeprefix("identifier=").rpartition("|")
        for r in self.resources.get(kind, []):
            if any(i.get("system") == system and i.get("value") == value for i in r.get("identifier", [])):
                return r
        return None

    def start(self) -> "FhirReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _outcome(text: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
