"""Argument types and the exit code shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Callable

#: Exit code of an error the user can fix (a NodeError or PipelineError, said in one
#: line): bad arguments, a bad input, a bad configuration. A bug ends in a traceback (1).
EXIT_USAGE = 2


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, with a plain-words error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    return parse


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` into ``progress`` (None: a bar only on a terminal)."""
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only on a terminal)",
    )
    bars.add_argument("--no-progress", dest="progress", action="store_false")


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set by SIGTERM or Ctrl-C (logged): a foreground command stops cleanly."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def quiet_loggers(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Libraries that log every instance or message speak up only with -v."""
    if not getattr(args, "verbose", False):
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
