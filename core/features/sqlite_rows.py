"""One entity's row read straight from the table Feast's SQLite online store writes.

Feast's ``online_read`` is generic: it serialises the key through the SDK, opens one shared
connection for every thread, converts each timestamp to a ``datetime`` and groups rows by key.
A request that wants one user's row needs one indexed ``SELECT``: this reader runs it on a
read-only connection per thread, with the key built from a prefix computed once. Feast still
writes the table (materialization and push sources); this only reads it, and it checks at start
that its key encoding is Feast's own.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from endcap.errors import FailedPrecondition
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

_PROBE = "endcap-key-probe-√"

log = structlog.get_logger("endcap.features")


def string_key_encoder(join_key: str, serialize: Callable[[EntityKeyProto], bytes]) -> Callable[[str], bytes]:
    """``value → serialized entity key`` for a single string join key: Feast's encoding ends
    with the value's length and bytes, so everything before them is computed once. Falls back to
    ``serialize`` itself if a probe key does not come out the same."""

    def proto(value: str) -> EntityKeyProto:
        return EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])

    prefix = serialize(proto(""))[:-4]
    pack = struct.Struct("<I").pack

    def encode(value: str) -> bytes:
        raw = value.encode()
        return prefix + pack(len(raw)) + raw

    if encode(_PROBE) != serialize(proto(_PROBE)):
        return lambda value: serialize(proto(value))
    return encode


def feast_table(store: Any, view: Any, join_key: str) -> tuple[Path, str, Callable[[str], bytes]]:
    """Where Feast's SQLite online store keeps ``view`` of ``store``: the database file, the
    table's name and the encoder of ``join_key`` values into its ``entity_key`` column."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import compute_table_id

    config = store.config
    version = config.entity_key_serialization_version
    key = string_key_encoder(join_key, lambda proto: serialize_entity_key(proto, version))
    table = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    database = Path(store._get_provider().online_store._get_db_path(config))
    return database, table, key


class SqliteRows:
    """Reads the given features of one entity from one Feast SQLite table, on the calling thread's
    own read-only connection.

    Feast keeps one row per feature; one aggregate ``SELECT`` folds them into a single result
    row, so SQLite steps once per read rather than once per feature (the ``sqlite3`` module lets
    go of the GIL at every step, which costs a busy server a thread switch each time).
    """

    def __init__(self, database: Path, table: str, key: Callable[[str], bytes], features: Sequence[str]) -> None:
        self.database = database
        self.table = table
        self.key = key
        self.features = tuple(features)
        quoted = '"' + table.replace('"', '""') + '"'
        columns = ", ".join("max(CASE WHEN feature_name = ? THEN value END)" for _ in self.features)
        self._sql = f"SELECT max(event_ts), {columns} FROM {quoted} WHERE entity_key = ?"
        self._sample_sql = f"SELECT entity_key FROM {quoted} GROUP BY entity_key ORDER BY random() LIMIT ?"
        self._many_sql = (
            f"SELECT entity_key, max(event_ts), {columns} FROM {quoted} WHERE entity_key IN (%s) GROUP BY entity_key"
        )
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        """This thread's read-only connection; a process forked from one that had a connection
        (batch workers) opens its own, as SQLite connections must not cross a fork."""
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = sqlite3.connect(f"{self.database.resolve().as_uri()}?mode=ro", uri=True)
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _fetch(self, sql: str, parameters: Sequence[object]) -> list[Any]:
        """``sql``'s rows; a store left with a hot journal by a writer that died mid-write
        (which a read-only connection cannot roll back) is recovered once, then read again."""
        for attempt in (1, 2):
            try:
                return self._connection().execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                if attempt == 2 or "readonly" not in str(exc):
                    raise self._unreadable(exc) from exc
                self._recover(exc)
        raise AssertionError("unreachable")

    def _recover(self, exc: sqlite3.Error) -> None:
        """Let SQLite roll back a dead writer's journal on a read-write connection (it does on the
        first read, under its own locks, so several processes may try at once)."""
        log.warning("online_store_recovered", database=str(self.database), error=str(exc))
        self._local.connection = None
        try:
            with closing(sqlite3.connect(self.database, timeout=10)) as writer:
                writer.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as again:
            raise self._unreadable(again) from again

    def read_raw(self, entity: str) -> tuple[float | None, tuple[bytes | None, ...]]:
        """The entity's newest write time (epoch seconds) and its values as stored (serialized
        Feast values in feature order, ``None`` where unset): equal tuples hold equal values."""
        [(newest, *raws)] = self._fetch(self._sql, (*self.features, self.key(entity)))
        return _written_at(newest), tuple(raws)

    def read_many(self, entities: Sequence[str]) -> list[tuple[float | None, dict[str, ValueProto]]]:
        """:meth:`read` of every entity, in order, in one ``SELECT`` per 500 (batch jobs)."""
        found: dict[bytes, tuple[float | None, dict[str, ValueProto]]] = {}
        keys = [self.key(entity) for entity in entities]
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            sql = self._many_sql % ", ".join("?" * len(part))
            for key, newest, *raws in self._fetch(sql, (*self.features, *part)):
                found[bytes(key)] = (_written_at(newest), self.values(tuple(raws)))
        return [found.get(key, (None, {})) for key in keys]

    def sample_keys(self, count: int) -> list[bytes]:
        """Up to ``count`` serialized entity keys the table holds, chosen at random."""
        return [bytes(key) for (key,) in self._fetch(self._sample_sql, (count,))]

    def values(self, raws: tuple[bytes | None, ...]) -> dict[str, ValueProto]:
        """Stored values (see :meth:`read_raw`) by feature name; unset ones left out."""
        pairs = zip(self.features, raws, strict=True)
        return {name: ValueProto.FromString(raw) for name, raw in pairs if raw is not None}

    def read(self, entity: str) -> tuple[float | None, dict[str, ValueProto]]:
        """The entity's newest write time (epoch seconds) and its values by feature name; no
        values for an entity the table does not hold."""
        newest, raws = self.read_raw(entity)
        return newest, self.values(raws)

    def _unreadable(self, exc: sqlite3.Error) -> FailedPrecondition:
        return FailedPrecondition(
            f"cannot read the online store {self.database} ({exc}); run 'endcap features' to build it"
        )


def _written_at(stored: object) -> float | None:
    """A stored ``event_ts`` as epoch seconds, read the way Feast reads it: Feast writes the naive
    UTC time through ``datetime.timestamp()`` (which takes it for local time) and reads it back
    with ``datetime.fromtimestamp()``, so the same pair recovers the UTC wall time whatever the
    machine's time zone. Older stores hold ISO text."""
    if stored is None:
        return None
    if isinstance(stored, int | float):
        naive = datetime.fromtimestamp(stored)
    else:
        naive = datetime.fromisoformat(stored.decode() if isinstance(stored, bytes) else str(stored))
    return naive.replace(tzinfo=UTC).timestamp()
