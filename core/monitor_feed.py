"""Monitors observe off the request path: hook calls are queued and delivered in order on one
thread of their own, so a caller gets its answer without waiting for logging and metrics.

The thread wakes every ``interval`` seconds and delivers everything queued since, so a busy
server pays one thread switch per batch, not per call, and runs the monitors' code with warm
caches; it lets go of the GIL between records at least every 0.3 ms, so a request does not
wait behind a whole batch. The queue is bounded: if monitors fall that far behind, requests
wait for them rather than records being dropped. :meth:`MonitorFeed.flush` delivers everything
submitted so far; the metrics registry flushes before each scrape, and the server before it
exits.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

Deliver = Callable[[str, tuple[Any, ...]], None]
YIELD_SECONDS = 0.0003
"""Longest stretch of monitor work before a request thread gets a chance at the GIL."""


class MonitorFeed:
    def __init__(self, deliver: Deliver, capacity: int = 10_000, interval: float = 0.02) -> None:
        self._deliver = deliver
        self.interval = interval
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | threading.Event] = queue.SimpleQueue()
        self._room = threading.Semaphore(capacity)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endcap-monitors", daemon=True)
        self._thread.start()

    def submit(self, hook: str, *args: Any) -> None:
        """Queue one hook call (``on_request``, ``on_call``, …) for every monitor."""
        self._room.acquire()
        self._queue.put((hook, args))

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver every hook call submitted before this one, now; returns whether that took less
        than ``timeout``. A no-op on the delivering thread itself."""
        if threading.current_thread() is self._thread:
            return True
        delivered = threading.Event()
        self._queue.put(delivered)
        self._wake.set()
        return delivered.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            yielded = time.perf_counter()
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                try:
                    self._deliver(*item)
                except Exception:  # the feed outlives a failed delivery, or requests would wait on it forever
                    traceback.print_exc()
                finally:
                    self._room.release()
                if time.perf_counter() - yielded > YIELD_SECONDS:
                    time.sleep(0)  # let a waiting request thread take the GIL
                    yielded = time.perf_counter()


class FlushBeforeCollect:
    """A collector that yields nothing, registered first in a ``CollectorRegistry``: every scrape
    then sees the calls that completed before it."""

    def __init__(self, feed: MonitorFeed) -> None:
        self.feed = feed

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self.feed.flush()
        return []
