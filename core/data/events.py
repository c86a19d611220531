"""The event log: shopper events appended as JSON lines, fsynced before ``RecordEvents`` returns.

Several processes write one log (``endcap serve --processes N``, replicas sharing a workspace),
and any of them may die mid-write. So every append and every repair holds an exclusive
``fcntl.flock`` on ``<log>.lock``, shared by all processes and threads; an append that finds a
torn last record (a writer killed mid-write) cuts it off first, so an acknowledged record always
starts on a line of its own; and reading skips a damaged line, counting and logging it, instead
of failing whatever reads the log (``endcap retrain``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import structlog
from endcap.types import Event

log = structlog.get_logger("endcap.events")

EVENT_TYPES = ("purchase", "add_to_cart", "view")

DEDUPE_WINDOW_BYTES = 64 * 1024 * 1024
"""A retried ``event_id`` is recognised while its first record is within the log's last 64 MiB."""

_RECORD_START = b'{"user_id"'


class EventLog:
    """Append-only, one JSON object per line. Appends are serialised across processes and
    durable when they return."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(f"{path.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seen_ids: set[str] = set()
        self._indexed_to: int | None = None
        """How far :attr:`_seen_ids` has read the log (``None``: not yet)."""
        self.damaged_lines = 0
        """Damaged lines the last :meth:`read_from` skipped."""

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log's lock (exclusive, shared by every process and thread using this log)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def append(self, events: Sequence[Event]) -> int:
        """Write ``events`` durably; returns how many were written (see :meth:`record`)."""
        return len(self.record(events))

    def record(self, events: Sequence[Event]) -> tuple[Event, ...]:
        """Write ``events`` durably, leaving out those whose ``event_id`` the log already holds
        (a retried call) or that repeat an id within ``events``; returns the events written."""
        if not events:
            return ()
        with self.locked():
            fresh = self._unseen(events)
            indexed = any(e.event_id for e in events)  # the id index reached the log's end just now
            if not fresh:
                return ()
            payload = "".join(_record(e) for e in fresh).encode()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._cut_torn_tail(fd)
                os.write(fd, payload)
                os.fsync(fd)
                if indexed:
                    self._indexed_to = os.fstat(fd).st_size
            finally:
                os.close(fd)
            self._seen_ids.update(e.event_id for e in fresh if e.event_id)
        return fresh

    def _unseen(self, events: Sequence[Event]) -> tuple[Event, ...]:
        """``events`` less those whose id was recorded before (call with the lock held)."""
        if not any(e.event_id for e in events):
            return tuple(events)
        self._index_ids()
        fresh, ids = [], set()
        for event in events:
            if event.event_id and (event.event_id in self._seen_ids or event.event_id in ids):
                continue
            ids.add(event.event_id)
            fresh.append(event)
        return tuple(fresh)

    def _index_ids(self) -> None:
        """Bring :attr:`_seen_ids` up to the log's last complete line (other processes append
        too); call with the lock held."""
        size = self.path.stat().st_size if self.path.exists() else 0
        start = self._indexed_to
        if start is None or start > size:  # first look, or the log was replaced
            self._seen_ids.clear()
            start = max(0, size - DEDUPE_WINDOW_BYTES)
            if start:  # inside a line: begin at the next whole one
                with self.path.open("rb") as handle:
                    handle.seek(start)
                    start += len(handle.readline())
        data = b""
        if size > start:
            with self.path.open("rb") as handle:
                handle.seek(start)
                data = handle.read(size - start)
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            event = _parse(line)
            if event is not None and event.event_id:
                self._seen_ids.add(event.event_id)
        self._indexed_to = start + len(complete)

    def repair(self) -> int:
        """Cut a torn last record (a write interrupted by a crash) off the log and keep its bytes
        beside it in ``<log>.torn-<time>``; returns how many bytes were moved. Acknowledged events
        are never torn: ``append`` returns only after the whole batch is on disk."""
        if not self.path.exists():
            return 0
        with self.locked():
            fd = os.open(self.path, os.O_RDWR)
            try:
                return self._cut_torn_tail(fd)
            finally:
                os.close(fd)

    def _cut_torn_tail(self, fd: int) -> int:
        """:meth:`repair` on an open descriptor, with the lock held."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        data = os.pread(fd, size, 0)
        end = data.rfind(b"\n") + 1
        torn = data[end:]
        aside = self.path.with_name(f"{self.path.name}.torn-{time.time_ns()}")
        aside.write_bytes(torn)
        os.ftruncate(fd, end)
        os.fsync(fd)
        log.warning("event_log_repaired", path=str(self.path), torn_bytes=len(torn), kept_in=str(aside))
        return len(torn)

    def read(self) -> Iterator[Event]:
        yield from self.read_from(0)[0]

    def read_from(self, offset: int) -> tuple[list[Event], int]:
        """Complete events after byte ``offset`` and the offset just past the last line read.

        A damaged line (not an event's JSON) is skipped, counted in :attr:`damaged_lines` and
        logged at warning level with where it starts; an event glued after a torn record on the
        same line (a log written before appends cut torn tails) is still read."""
        self.damaged_lines = 0
        if not self.path.exists():
            return [], offset
        with self.path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        events: list[Event] = []
        damaged: list[int] = []
        position = offset
        for line in complete.split(b"\n")[:-1]:
            if line.strip():
                event = _parse(line)
                if event is None:
                    damaged.append(position)
                    event = _parse(line[line.rfind(_RECORD_START) :]) if line.rfind(_RECORD_START) > 0 else None
                if event is not None:
                    events.append(event)
            position += len(line) + 1
        if damaged:
            self.damaged_lines = len(damaged)
            log.warning(
                "event_log_damaged_lines",
                path=str(self.path),
                skipped=len(damaged),
                at_bytes=damaged[:10],
                action="damaged lines are left out; move them aside by hand once read",
            )
        return events, offset + len(complete)


def _record(event: Event) -> str:
    """One event's line; ``event_id`` only when the client gave one (older lines have none)."""
    fields = asdict(event)
    if not event.event_id:
        del fields["event_id"]
    return json.dumps(fields, separators=(",", ":")) + "\n"


def _parse(line: bytes) -> Event | None:
    """One logged event, or ``None`` when the line is not one."""
    try:
        raw = json.loads(line)
        return Event(**raw) if isinstance(raw, dict) else None
    except (ValueError, TypeError):
        return None
