"""Peer-supplied text made safe for one log line, and a rate limit for noisy warnings.

Anything a network peer sends (AE titles, UIDs, error text built from them) may hold a
newline, a carriage return or terminal escapes: written as-is it forges log lines.
``peer_text`` keeps printable ASCII and writes everything else as ``\\xNN`` (a backslash
too, so an escape cannot be faked), cut to a length.

``RateLimitedLog`` lets a warning through at most ``burst`` times per ``window_s`` and
then says once how many it held back: a peer that sends a thousand malformed requests
gets a handful of lines, not a flooded disk.
"""

from __future__ import annotations

import logging
import threading
import time

_PRINTABLE = {c for c in range(0x20, 0x7F)} - {ord("\\")}


def peer_text(value: object, limit: int = 80) -> str:
    """``value`` as one safe log token: printable ASCII kept, the rest as ``\\xNN``, cut at ``limit``."""
    text = value if isinstance(value, str) else str(value)
    out = []
    for ch in text[:limit]:
        code = ord(ch)
        if code in _PRINTABLE:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    if len(text) > limit:
        out.append(f"...(+{len(text) - limit})")
    return "".join(out)


class RateLimitedLog:
    """Log ``burst`` messages per ``window_s`` (per limiter), then one "held back" line."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window_s: float = 60.0) -> None:
        self.logger = logger
        self.burst = int(burst)
        self.window_s = float(window_s)
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._count = 0
        self._held = 0
        #: Every message asked for since the start, let through or held back (for metrics).
        self.total = 0

    def warning(self, msg: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            held = 0
            if now - self._start >= self.window_s:
                held, self._held = self._held, 0
                self._start, self._count = now, 0
            self._count += 1
            self.total += 1
            emit = self._count <= self.burst
            if not emit:
                self._held += 1
        if held:
            self.logger.warning("%d similar message(s) held back in the last %.0f s", held, self.window_s)
        if emit:
            self.logger.warning(msg, *args)
