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
    "worker": ("worker", "analyse the jobs a node hands out through its [broker] (scale-out)"),
    "config": ("config_cmd", "check a node configuration file"),
    "status": ("status", "list recent series, jobs and deliveries"),
    "analyze": ("analyze", "run the AI chain on a DICOM series folder or a NIfTI volume"),
    "demo": ("demo", "send a synthetic chest CT to a node and print the report summary"),
    "train": ("train", "train a model of the chain"),
    "evaluate": ("evaluate", "evaluate a model bundle with the paper's protocol"),
    "phenotype": (
        "phenotype",
        "the phenotype study: radiomics of the attentional regions of a cohort's pneumonia cases",
    ),
    "calibrate": ("calibrate", "choose a bundle's operating points and out-of-domain reference on validation data"),
}


def _chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported: a broken or slow-to-import command
    cannot take the others down (``dicomnode status`` must work whatever else is wrong)."""
    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dicomnode",
        description="COVID-CT-Node: a DICOM node that runs the COVID-19 chest CT chain of Jin et al. 2020.",
    )
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"dicomnode.commands.{module_name}")
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
