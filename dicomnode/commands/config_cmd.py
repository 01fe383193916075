"""``dicomnode config check FILE``: every problem of a node configuration, in plain words."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="check a configuration file; exit 0 when fine, 1 otherwise")
    check.add_argument("file", type=Path, help="the TOML file, e.g. config/node.toml")


def run(args: argparse.Namespace) -> int:
    from dicomnode.config import load_config
    from dicomnode.errors import ConfigError

    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        print(f"{args.file}: {len(e.problems)} problem(s):")
        for problem in e.problems:
            print(f"  - {problem}")
        return 1
    print(f"config OK: {cfg.summary()}")
    return 0
