"""``dicomnode serve``: run the listener, the worker and the timers in one process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._args import EXIT_USAGE, quiet_loggers, stop_on_signals

log = logging.getLogger("dicomnode.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dicomnode.config import DEFAULT_CONFIG_PATH

    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help="node configuration (TOML); default: the repository's config/node.toml",
    )
    parser.add_argument("--ae-title", help="our AE title (overrides [node] ae_title)")
    parser.add_argument("--port", type=int, help="listening port (overrides [node] port)")
    parser.add_argument("--bind", help="listening address (overrides [node] bind_address)")
    parser.add_argument("--data-dir", type=Path, help="data folder: database, storage, results")
    parser.add_argument("--quiet-seconds", type=float, help="quiet period that completes a series")
    parser.add_argument("--bundle", type=Path, help="model bundle folder (overrides [pipeline] bundle)")
    parser.add_argument(
        "--destination",
        action="append",
        metavar="AE@HOST:PORT",
        help="send results here (repeatable; replaces the file's destinations)",
    )
    tls = parser.add_argument_group("DICOM TLS (overrides [node] tls_*)")
    tls.add_argument("--tls-port", type=int, help="TLS listener port, 0 = none")
    tls.add_argument("--tls-cert", type=Path, help="our certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="CA certificates that client certificates are checked against")
    tls.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        default=None,
        help="refuse TLS peers without a certificate signed by --tls-ca",
    )
    parser.add_argument("--http-port", type=int, help="admin API / metrics port, 0 = off (overrides [http] port)")
    parser.add_argument(
        "--http-bind",
        help="admin API address (overrides [http] bind_address; not loopback needs a token in $DICOMNODE_HTTP_TOKEN)",
    )


def run(args: argparse.Namespace) -> int:
    from dicomnode.config import load_config, parse_destination, with_overrides
    from dicomnode.errors import ConfigError, NodeError

    try:
        cfg = load_config(args.config)
        dests = None
        if args.destination:
            dests = [parse_destination(d) for d in args.destination]
        cfg = with_overrides(
            cfg,
            ae_title=args.ae_title,
            port=args.port,
            data_dir=args.data_dir,
            quiet_seconds=args.quiet_seconds,
            bind_address=args.bind,
            bundle=args.bundle,
            destinations=dests,
            http_port=args.http_port,
            http_bind=args.http_bind,
            tls={
                "tls_port": args.tls_port,
                "tls_cert_file": args.tls_cert,
                "tls_key_file": args.tls_key,
                "tls_ca_file": args.tls_ca,
                "tls_require_client_cert": args.tls_require_client_cert,
            },
        )
    except (ConfigError, ValueError) as e:
        print(f"dicomnode serve: {e}")
        return EXIT_USAGE

    from dicomnode.node import Node

    # One line per received instance or timer run drowns what matters; -v shows them.
    quiet_loggers(args, ("pynetdicom", "apscheduler", "highdicom"))
    stop = stop_on_signals(log)
    node = Node(cfg)
    try:
        node.start()
    except (NodeError, OSError) as e:
        print(f"dicomnode serve: cannot start: {e}")
        return 1
    where = f"{cfg.node.bind_address}:{node.port}" if cfg.node.port else "no plain port"
    tls = ""
    if node.tls_port:
        checks = (
            "client certificates required"
            if cfg.node.tls_require_client_cert or cfg.node.tls_client_subjects
            else "client certificates checked"
            if cfg.node.tls_ca_file
            else "no client certificates"
        )
        tls = f", DICOM TLS on {cfg.node.bind_address}:{node.tls_port} ({checks})"
    print(f"listening on {where} as AE {cfg.node.ae_title}{tls}", flush=True)
    if node.http is not None:
        print(
            f"admin API and metrics on {node.http.url} (dashboard {node.http.url}/dashboard, health "
            f"{node.http.url}/readyz, metrics {node.http.url}/metrics, API docs {node.http.url}/docs)",
            flush=True,
        )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    print("stopped", flush=True)
    return 0
