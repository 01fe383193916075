"""``dicomnode`` command line: parses, then hands over to dicomnode.commands.<name>."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

#: sub-command -> (module in dicomnode.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the DICOM listener and the worker"),
    "config": ("config_cmd", "check a node configuration file"),
    "status": ("status", "list recent series, jobs and deliveries"),
    "analyze": ("analyze", "run the AI chain on a DICOM series folder or a NIfTI volume"),
    "demo": ("demo", "send a synthetic chest CT to a node and print the report summary"),
    "train": ("train", "train a model of the chain"),
    "evaluate": ("evaluate", "evaluate a model bundle with the paper's protocol"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"dicomnode.commands.{module_name}")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
