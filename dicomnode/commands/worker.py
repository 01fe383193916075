"""``dicomnode worker``: analyse the jobs a node hands out through its broker.

Runs in the foreground until SIGTERM or Ctrl-C. Needs the node's config file with
``[broker] url`` set and ``[node] data_dir`` pointing at the data folder the node uses
(shared storage when on another machine). One process per GPU or CPU share; it loads
the model bundle once and keeps it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from ._args import EXIT_USAGE, quiet_loggers, stop_on_signals, whole_number

log = logging.getLogger("dicomnode.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the node's configuration (TOML) with [broker] url")
    parser.add_argument("--data-dir", type=Path, help="the node's data folder (overrides [node] data_dir)")
    parser.add_argument("--bundle", type=Path, help="model bundle folder (overrides [pipeline] bundle)")
    parser.add_argument("--name", help="this worker's name in logs and replies (default HOST-PID)")
    parser.add_argument(
        "--torch-threads",
        type=whole_number(1),
        help="CPU threads of the chain (torch.set_num_threads); default: torch's (all cores). "
        "Several CPU workers on one machine: give each its share",
    )


def run(args: argparse.Namespace) -> int:
    from dicomnode.config import load_config, with_overrides
    from dicomnode.errors import ConfigError, NodeError

    try:
        cfg = with_overrides(load_config(args.config), data_dir=args.data_dir, bundle=args.bundle)
    except ConfigError as e:
        print(f"dicomnode worker: {e}")
        return EXIT_USAGE
    if not cfg.broker.enabled:
        print(f"dicomnode worker: {args.config} has no [broker] url; a worker needs the broker the node uses")
        return EXIT_USAGE
    quiet_loggers(args, ("highdicom", "dramatiq"))

    from dicomnode.broker.remote import RemoteWorker
    from dicomnode.broker.transport import ANALYSIS_ACTOR, ANALYSIS_QUEUE, Transport, broker_failures_only
    from pipeline.types import PipelineError

    stop = stop_on_signals(log)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        transport = Transport(cfg.broker)
        transport.ping()
        worker = RemoteWorker(cfg, transport, name)
        worker.load()
        transport.consume(
            ANALYSIS_QUEUE,
            ANALYSIS_ACTOR,
            worker.handle,
            time_limit_s=cfg.node.job_lease_seconds,
            retries=0,
            retry_when=broker_failures_only,
        )
    except (NodeError, PipelineError) as e:
        print(f"dicomnode worker: cannot start: {e}")
        return 1
    print(f"worker {name} ready: jobs from {transport.url}, data in {cfg.node.data_dir}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        transport.close(timeout_s=cfg.node.job_lease_seconds)
    print("stopped", flush=True)
    return 0
