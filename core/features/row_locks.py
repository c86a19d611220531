"""The lock behind every read-modify-write of users' online rows, shared by processes and replicas.

A real-time update reads a user's row, adds an order and pushes the row back; two of them at
once for one user, in two processes, would each start from the same row and one order would be
lost. A ``threading.Lock`` protects nothing across ``endcap serve --processes N`` workers or
replicas, so the lock lives where every writer of the online store can see it:

- the local (SQLite) profile: ``fcntl.flock`` on a file beside the SQLite database, which every
  process writing that database can open (it is released by the kernel when its holder dies);
- the Redis profile: a lock in the Redis server the replicas share (``SET NX PX`` with a lease,
  released with its token), so replicas on different machines exclude each other too.

One lock for all users, not one per user: ``endcap features`` holds it while it materializes and
puts back the rows it would otherwise roll back (:mod:`endcap.features.pushed_rows`), and a purchase of a
user not yet known to that run must wait for it as well. A push takes a few milliseconds, so
the lock costs throughput only beyond hundreds of purchase calls a second; ``Recommend`` never
takes it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import structlog
from endcap.errors import Unavailable

log = structlog.get_logger("endcap.row_locks")


class RowLock(Protocol):
    def hold(self, lease_seconds: float | None = None) -> Any:
        """A context manager holding the lock (``lease_seconds``: how long a holder may keep it
        before it is presumed dead, where the lock has leases)."""


class FileRowLock:
    """``fcntl.flock`` on ``path``: every process and thread on this machine (a fresh descriptor
    per hold, so threads of one process exclude each other too)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def hold(self, lease_seconds: float | None = None) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class RedisRowLock:
    """A lock in Redis (redis-py's ``Lock``: ``SET NX PX`` and a token-checked release), shared by
    every replica using the store. A holder that dies frees it when its lease runs out."""

    LEASE_SECONDS = 30.0
    WAIT_SECONDS = 120.0

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    @contextmanager
    def hold(self, lease_seconds: float | None = None) -> Iterator[None]:
        lease = lease_seconds or self.LEASE_SECONDS
        lock = self.client.lock(self.name, timeout=lease, blocking_timeout=self.WAIT_SECONDS, thread_local=False)
        started = time.monotonic()
        if not lock.acquire():
            raise Unavailable(
                f"the online store's row lock {self.name!r} in Redis was held by another writer for more than "
                f"{self.WAIT_SECONDS:.0f} s (an 'endcap features' run materializing?); retry the call"
            )
        try:
            yield
        finally:
            from redis.exceptions import LockError

            try:
                lock.release()
            except LockError:  # the lease ran out while held: another writer may have overlapped
                log.error(
                    "row_lock_lease_expired",
                    lock=self.name,
                    held_seconds=round(time.monotonic() - started, 3),
                    lease_seconds=lease,
                )


def row_lock_for(store: Any) -> RowLock:
    """The row lock of a Feast ``FeatureStore``'s online store: a Redis lock for Redis, else a
    file lock beside the SQLite database (or in the repository folder)."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    config = store.config
    online = store._get_provider().online_store
    if isinstance(online, RedisOnlineStore):
        return RedisRowLock(online._get_client(config.online_store), f"endcap:{config.project}:user-rows-lock")
    if isinstance(online, SqliteOnlineStore):
        database = Path(online._get_db_path(config))
        return FileRowLock(database.with_name(f"{database.name}.rows-lock"))
    return FileRowLock(Path(config.repo_path) / "user-rows.lock")
