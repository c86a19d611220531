"""The event log: shopper events appended as JSON lines, fsynced before ``RecordEvents`` returns."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import structlog
from endcap.types import Event

log = structlog.get_logger("endcap.events")

EVENT_TYPES = ("purchase", "add_to_cart", "view")


class EventLog:
    """Append-only, one JSON object per line. Appends are serialised and durable when they return."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        payload = "".join(json.dumps(asdict(e), separators=(",", ":")) + "\n" for e in events).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(events)

    def repair(self) -> int:
        """Cut a torn last record (a write interrupted by a crash) off the log and keep its bytes
        beside it in ``<log>.torn-<time>``; returns how many bytes were moved. Acknowledged events
        are never torn: ``append`` returns only after the whole batch is on disk."""
        if not self.path.exists():
            return 0
        with self._lock, self.path.open("rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end == len(data):
                return 0
            torn = data[end:]
            self.path.with_name(f"{self.path.name}.torn-{int(time.time())}").write_bytes(torn)
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
        log.warning("event_log_repaired", path=str(self.path), torn_bytes=len(torn))
        return len(torn)

    def read(self) -> Iterator[Event]:
        yield from self.read_from(0)[0]

    def read_from(self, offset: int) -> tuple[list[Event], int]:
        """Complete events after byte ``offset`` and the offset just past the last one read."""
        if not self.path.exists():
            return [], offset
        with self.path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        events = [Event(**json.loads(line)) for line in complete.splitlines() if line.strip()]
        return events, offset + len(complete)
