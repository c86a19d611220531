"""A warning that counts every occurrence but writes at most one line per interval."""

from __future__ import annotations

import threading
import time

import structlog

log = structlog.get_logger("endcap.serving")


class RateLimitedCount:
    """Counts ``event`` and logs it at warning level at most once every ``interval`` seconds, with
    how many happened since the last line and in all; ``total`` is always exact."""

    def __init__(self, event: str, what: str, interval: float = 10.0) -> None:
        self.event, self.what, self.interval = event, what, interval
        self.total = 0
        self._since_line = 0
        self._next_line = 0.0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.total += 1
            self._since_line += 1
            now = time.monotonic()
            if now < self._next_line:
                return
            count, self._since_line, self._next_line = self._since_line, 0, now + self.interval
            total = self.total
        log.warning(self.event, what=self.what, count=count, total=total, per_seconds=self.interval)
