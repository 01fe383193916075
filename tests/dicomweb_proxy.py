"""One origin for OHIF Viewer v3 and Orthanc's DICOMweb API, for viewer tests and docs screenshots.

OHIF's static build is served at ``/`` (any path that is not a file falls back to
``index.html``, as a single-page app needs); ``/app-config.js`` is replaced by our own
configuration; ``/dicom-web/*`` is forwarded to Orthanc's DICOMweb root. One origin means
the browser needs no CORS set-up.

Orthanc's DICOMweb plugin 1.7 answers OHIF's ``includefield=a,b`` with an error, so the
proxy rewrites it as ``includefield=a&includefield=b`` (both forms are valid QIDO-RS).
Bodies are streamed in both directions, and content types are kept.

Run by hand (the address to open is printed)::

    .venv/bin/python tests/dicomweb_proxy.py --orthanc http://127.0.0.1:8042/dicom-web/
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import mimetypes
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOG = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIST = REPO_ROOT / "tests" / ".ohif" / "dist"
DEFAULT_APP_CONFIG = REPO_ROOT / "tests" / "ohif" / "app-config.js"

DICOMWEB_PREFIX = "/dicom-web"
APP_CONFIG_PATH = "/app-config.js"
CHUNK_BYTES = 64 * 1024
UPSTREAM_TIMEOUT_S = 60.0

# Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the message,
# so they are never forwarded; the proxy frames its own responses.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# The build ships WebAssembly and source maps, which Python's mimetypes table may not know;
# chromium refuses to stream-compile wasm served with any other type.
EXTRA_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
}


def split_includefield(query: str) -> str:
    """Rewrite every ``includefield=a,b`` of a query string as ``includefield=a&includefield=b``.

    Other parameters, their order and their encoding are kept as they came.
    """
    if not query:
        return query
    parts: list[str] = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        if sep and urllib.parse.unquote_plus(name).lower() == "includefield":
            decoded = urllib.parse.unquote_plus(value)
            for field in decoded.split(","):
                field = field.strip()
                if field:
                    parts.append(f"{name}={urllib.parse.quote(field, safe='')}")
        else:
            parts.append(item)
    return "&".join(parts)


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy serves: the OHIF build, its configuration, and the Orthanc upstream."""

    dist_dir: Path
    app_config: Path
    upstream_host: str
    upstream_port: int
    upstream_root: str  # path of Orthanc's DICOMweb root, without a trailing slash

    @classmethod
    def create(cls, dist_dir: Path, app_config: Path, orthanc_dicomweb_url: str) -> ProxyConfig:
        """Check the arguments and build a config; ``orthanc_dicomweb_url`` like
        ``http://127.0.0.1:8042/dicom-web/``."""
        dist_dir = Path(dist_dir).resolve()
        if not (dist_dir / "index.html").is_file():
            raise FileNotFoundError(
                f'Argument "dist_dir": no index.html in {dist_dir}; run tests/ohif/setup.sh to unpack the OHIF build'
            )
        app_config = Path(app_config).resolve()
        if not app_config.is_file():
            raise FileNotFoundError(f'Argument "app_config": {app_config} does not exist')
        url = urllib.parse.urlsplit(orthanc_dicomweb_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(
                'Argument "orthanc_dicomweb_url" must be an http:// URL such as '
                f"http://127.0.0.1:8042/dicom-web/, got {orthanc_dicomweb_url!r}"
            )
        return cls(
            dist_dir=dist_dir,
            app_config=app_config,
            upstream_host=url.hostname,
            upstream_port=url.port or 80,
            upstream_root=url.path.rstrip("/"),
        )


class ProxyHandler(BaseHTTPRequestHandler):
    """Serves one request: a static file of the OHIF build or a forwarded DICOMweb call."""

    # HTTP/1.1 keeps connections alive: OHIF makes hundreds of small requests per study.
    protocol_version = "HTTP/1.1"
    server_version = "covid-ct-node-test-proxy"
    config: ProxyConfig  # bound per server by make_server()

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(send_body=False)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(send_body=True)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        LOG.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, send_body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
                self._forward(send_body)
            elif self.command == "POST":
                self._send_error(405, "only /dicom-web/ accepts POST")
            else:
                self._serve_static(path, send_body)
        except (BrokenPipeError, ConnectionResetError):
            # The browser cancelled the request (OHIF does when the user scrolls on).
            self.close_connection = True

    def _serve_static(self, url_path: str, send_body: bool) -> None:
        if url_path == APP_CONFIG_PATH:
            file_path = self.config.app_config
        else:
            file_path = self._resolve_static(url_path)
        ctype = EXTRA_TYPES.get(file_path.suffix) or (
            mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        )
        size = file_path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        # index.html and app-config.js change between runs; hashed bundles never do.
        immutable = ".bundle." in file_path.name or file_path.suffix == ".wasm"
        self.send_header("Cache-Control", "max-age=3600" if immutable else "no-cache")
        self.end_headers()
        if send_body:
            with file_path.open("rb") as fh:
                shutil.copyfileobj(fh, self.wfile, CHUNK_BYTES)

    def _resolve_static(self, url_path: str) -> Path:
        """Map a URL path to a file inside dist, falling back to index.html (SPA routes)."""
        dist = self.config.dist_dir
        relative = urllib.parse.unquote(url_path).lstrip("/")
        candidate = (dist / relative).resolve()
        # A path that climbs out of dist (../) is treated as an app route, never served.
        if relative and candidate.is_relative_to(dist) and candidate.is_file():
            return candidate
        return dist / "index.html"

    def _forward(self, send_body: bool) -> None:
        split = urllib.parse.urlsplit(self.path)
        upstream_path = self.config.upstream_root + split.path[len(DICOMWEB_PREFIX) :]
        query = split_includefield(split.query)
        if query:
            upstream_path += "?" + query
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "host"
        }
        # Orthanc builds BulkDataURI links from the Host it sees; the browser must get
        # links to this proxy, whose path prefix is the same /dicom-web.
        headers["Host"] = self.headers.get("Host", f"{self.server.server_address[0]}")
        headers["Forwarded"] = f"host={headers['Host']};proto=http"
        length = int(self.headers.get("Content-Length") or 0)

        upstream = http.client.HTTPConnection(
            self.config.upstream_host, self.config.upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            upstream.putrequest(self.command, upstream_path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                upstream.putheader(name, value)
            upstream.endheaders()
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    break
                upstream.send(chunk)
                remaining -= len(chunk)
            response = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            LOG.warning(
                "DICOMweb upstream %s:%s unreachable: %s", self.config.upstream_host, self.config.upstream_port, exc
            )
            self._send_error(502, f"Orthanc DICOMweb unreachable: {exc}")
            return

        try:
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            known_length = response.getheader("Content-Length")
            no_body = not send_body or self.command == "HEAD" or response.status in (204, 304)
            if known_length is not None:
                self.send_header("Content-Length", known_length)
                self.end_headers()
                if not no_body:
                    shutil.copyfileobj(response, self.wfile, CHUNK_BYTES)
            elif no_body:
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                # Orthanc streams multipart answers chunked; re-chunk them as they come.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := response.read1(CHUNK_BYTES):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        finally:
            response.close()
            upstream.close()

    def _send_error(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(config: ProxyConfig, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Bind a proxy server (``port=0``: a free port, read it from ``server_address``)."""
    handler = type("BoundProxyHandler", (ProxyHandler,), {"config": config})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serving(
    orthanc_dicomweb_url: str,
    *,
    dist_dir: Path = DEFAULT_DIST,
    app_config: Path = DEFAULT_APP_CONFIG,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[str]:
    """Run the proxy in a background thread; yields its base URL like ``http://127.0.0.1:PORT``."""
    config = ProxyConfig.create(dist_dir, app_config, orthanc_dicomweb_url)
    server = make_server(config, host, port)
    thread = threading.Thread(target=server.serve_forever, name="dicomweb-proxy", daemon=True)
    thread.start()
    try:
        bound_host, bound_port = server.server_address[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    """Serve OHIF and proxy to Orthanc until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orthanc", required=True, help="Orthanc DICOMweb root URL")
    parser.add_argument("--dist", type=Path, default=DEFAULT_DIST, help="OHIF dist/ folder")
    parser.add_argument("--app-config", type=Path, default=DEFAULT_APP_CONFIG)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = ProxyConfig.create(args.dist, args.app_config, args.orthanc)
    server = make_server(config, args.host, args.port)
    print(f"OHIF at http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
