"""Monitors observe off the request path: hook calls are queued and delivered one at a time, in
order, after the caller has its answer, so a caller never waits for logging and metrics.

A server's call threads deliver what is queued once their call's answer is sent (see
:meth:`MonitorFeed.drain`): the work runs right after the request that produced it, with warm
caches and no hand-over to another thread. A thread of the feed's own delivers whatever is left
within ``interval`` seconds (the server is idle, or the call threads are busy), letting go of the
GIL between records at least every 0.3 ms so a request does not wait behind a whole batch. One
lock keeps deliveries one at a time and in order. The queue is bounded: if monitors fall that
far behind, requests wait for them rather than records being dropped. :meth:`MonitorFeed.flush`
delivers everything submitted so far; the metrics registry flushes before each scrape, and the
server before it exits.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

Deliver = Callable[[str, tuple[Any, ...]], None]
YIELD_SECONDS = 0.0003
"""Longest stretch of monitor work on the feed's thread before a request thread gets a chance at
the GIL."""
DRAIN_LIMIT = 16
"""Most records delivered while holding the delivery lock: a call thread soon takes its next
call, and the feed's thread lets call threads deliver in between."""


class MonitorFeed:
    def __init__(self, deliver: Deliver, capacity: int = 10_000, interval: float = 0.02) -> None:
        self._deliver = deliver
        self.interval = interval
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | threading.Event] = queue.SimpleQueue()
        self._room = threading.Semaphore(capacity)
        self._delivering = threading.Lock()
        self._deliverer: int | None = None
        """The thread delivering now (``flush`` from inside a monitor must not wait for itself)."""
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endcap-monitors", daemon=True)
        self._thread.start()

    def submit(self, hook: str, *args: Any) -> None:
        """Queue one hook call (``on_request``, ``on_call``, …) for every monitor."""
        self._room.acquire()
        self._queue.put((hook, args))

    def drain(self, limit: int = DRAIN_LIMIT) -> None:
        """Deliver up to ``limit`` queued hook calls now, on this thread; returns at once if
        another thread is delivering (it, or the feed's thread, delivers these too)."""
        if self._delivering.acquire(blocking=False):
            try:
                self._deliver_queued(limit, yield_gil=False)
            finally:
                self._delivering.release()

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver every hook call submitted before this one; returns whether that took less
        than ``timeout``. A no-op when called from inside a delivery."""
        if self._deliverer == threading.get_ident():
            return True
        delivered = threading.Event()
        self._queue.put(delivered)
        self._wake.set()
        return delivered.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while True:  # in chunks, letting call threads deliver in between
                with self._delivering:
                    delivered = self._deliver_queued(DRAIN_LIMIT, yield_gil=True)
                if delivered < DRAIN_LIMIT:
                    break

    def _deliver_queued(self, limit: int, yield_gil: bool) -> int:
        """Deliver up to ``limit`` queued hook calls (``flush`` markers are set on the way);
        returns how many were delivered."""
        self._deliverer = threading.get_ident()
        delivered = 0
        yielded = time.perf_counter()
        try:
            while delivered < limit:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                try:
                    self._deliver(*item)
                except Exception:  # monitors' own errors are logged in deliver; this is that logging failing
                    with contextlib.suppress(Exception):  # the feed outlives it, or requests would wait forever
                        traceback.print_exc()
                finally:
                    self._room.release()
                delivered += 1
                if yield_gil and time.perf_counter() - yielded > YIELD_SECONDS:
                    time.sleep(0)  # let a waiting request thread take the GIL
                    yielded = time.perf_counter()
        finally:
            self._deliverer = None
        return delivered


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
