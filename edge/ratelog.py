"""Rate-limited logging: at most one line per key per interval, and none dropped silently.

Why it exists: a car runs unattended for years. A failing camera, a dead GPS receiver or a link
that is down would otherwise write the same line many times a second until the disk is full.
Each kind of line gets a key; within `interval_s` of the last line logged for a key, further
lines for it are held back and counted, never silently dropped: the next line that gets through
says how many like it were held back since the previous one.

Guarantees:
- Keys are independent: a flood on one key never holds back a line on another.
- The first line for a key always gets through; after that at most one per `interval_s`, timed
  by the injected monotonic clock (a wall clock set backwards must not mute a key for days).
- Thread-safe: the count held back is exact when many threads log under the same key.
- `ready(key)` is the same decision for callers that format their own line: it answers None
  (hold this one back, it has been counted) or the number held back since the last line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one line per key per interval; the next line says how many were held back."""

    def __init__(
        self, logger: logging.Logger, interval_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def ready(self, key: str) -> int | None:
        """None to hold this line back (it is counted); else the number held back since the last."""
        now = self._monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: bool | BaseException | None = None,
    ) -> None:
        """Log `msg % args` at `level` unless `key` logged within the interval."""
        held = self.ready(key)
        if held is None:
            return
        if held:
            msg += " (%d similar lines held back)"
            args = (*args, held)
        self._logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)
