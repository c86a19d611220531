"""Endcap's own feature views written into Feast's SQLite online store in bulk.

Feast's ``write_to_online_store`` sends each list value through its generic type map and
upserts one row per feature of each entity from a Python loop: two thirds of ``endcap
features`` at a million users. This writer stores the same rows in the same table: keys in the
encoding :mod:`endcap.features.sqlite_rows` checks against Feast's, scalar columns converted by
Feast's own type map, list columns built straight into the protobuf list Feast's type map
would build, value texts from Feast's helper, and timestamps stored as Feast stores them. It
upserts them with one ``executemany`` per batch. Other online stores (Redis), views keyed
otherwise than by one string, and tables with Feast's optional columns (vector search, numeric
filters) are written by Feast itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from endcap.features.sqlite_rows import feast_table
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE, python_values_to_proto_values
from feast.utils import to_naive_utc
from feast.value_type import ValueType

FEAST_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
"""The columns Feast's SQLite store fills when vector search and numeric filters are off (its
optional columns stay empty): what this writer fills."""

LISTS_BUILT_HERE = (
    ValueType.STRING_LIST,
    ValueType.INT32_LIST,
    ValueType.INT64_LIST,
    ValueType.FLOAT_LIST,
    ValueType.DOUBLE_LIST,
)
"""List types Feast's type map converts element for element (the others keep Feast's path)."""

Writer = Callable[[pd.DataFrame], None]


def bulk_writer(store: Any, view: Any) -> Writer | None:
    """``rows → None`` writing ``view``'s rows (a frame with its join key, features, event and
    created timestamps) into ``store``'s SQLite online store as Feast would; ``None`` when Feast
    must write them itself (see the module's docstring)."""
    online = store.config.online_store
    if getattr(online, "type", "sqlite") != "sqlite" or getattr(online, "vector_enabled", False):
        return None
    view = store.get_feature_view(view.name)  # as registered: with its entities' columns
    if getattr(online, "enable_openai_compatible_store", False) or len(view.entity_columns) != 1:
        return None
    join_key = view.entity_columns[0]
    if join_key.dtype.to_value_type() != ValueType.STRING:
        return None
    database, table, key = feast_table(store, view, join_key.name)
    quoted = '"' + table.replace('"', '""') + '"'
    with closing(sqlite3.connect(database)) as connection:
        columns = tuple(row[1] for row in connection.execute(f"PRAGMA table_info({quoted})"))
    if not set(FEAST_COLUMNS) <= set(columns):  # Feast leaves its optional columns empty here too
        return None
    upsert = (
        f"INSERT INTO {quoted} ({', '.join(FEAST_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
        "value = excluded.value, value_text = excluded.value_text, "
        "event_ts = excluded.event_ts, created_ts = excluded.created_ts;"
    )
    features = [(field.name, field.dtype.to_value_type()) for field in view.features]
    source = view.batch_source

    def write(rows: pd.DataFrame) -> None:
        arrow = pa.Table.from_pandas(rows, preserve_index=False)
        keys = [key(str(value)) for value in arrow.column(join_key.name).to_pylist()]
        stored = [(name, *_stored_values(arrow.column(name), kind)) for name, kind in features]
        events = _stored_times(arrow.column(source.timestamp_field))
        created_column = source.created_timestamp_column
        created: list[int | None] = [None] * len(keys)
        if created_column:
            created = _stored_times(arrow.column(created_column))
        with closing(sqlite3.connect(database, timeout=60)) as connection, connection:
            connection.executemany(upsert, _rows(keys, stored, events, created))

    return write


def _rows(
    keys: list[bytes],
    stored: list[tuple[str, list[bytes], list[str | None]]],
    events: list[int | None],
    created: list[int | None],
) -> Iterator[tuple[Any, ...]]:
    """One table row per entity and feature, in Feast's order (entity by entity)."""
    for row, entity in enumerate(keys):
        for name, values, texts in stored:
            yield entity, name, values[row], texts[row], events[row], created[row]


def _stored_values(column: pa.ChunkedArray, kind: ValueType) -> tuple[list[bytes], list[str | None]]:
    """Each row's serialized Feast value and value text."""
    lists = column.combine_chunks()
    if kind in LISTS_BUILT_HERE and (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)):
        elements = lists.flatten()
        if not elements.null_count:  # Feast's type map would replace missing elements
            return _lists(lists, elements.to_pylist(), kind)
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), kind)
    return [proto.SerializeToString() for proto in protos], [extract_text_and_num(p, False)[0] for p in protos]


def _lists(lists: pa.Array, elements: list[Any], kind: ValueType) -> tuple[list[bytes], list[str | None]]:
    """Serialized Feast list values of ``lists`` (whose elements, in order, are ``elements``),
    as Feast's type map builds them: the list type's message, or an empty value for a missing
    list; no value texts."""
    proto_type, field_name, _ = PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE[kind]
    value_of: Any = ValueProto  # takes the list's field by name
    offsets = lists.offsets.to_numpy()
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    empty = ValueProto().SerializeToString()
    values = [
        value_of(**{field_name: proto_type(val=elements[offsets[row] : offsets[row + 1]])}).SerializeToString()
        if valid[row]
        else empty
        for row in range(len(lists))
    ]
    return values, [None] * len(values)


def _stored_times(column: pa.ChunkedArray) -> list[int | None]:
    """Timestamps as Feast's SQLite store keeps them: UTC made naive, then through the
    ``datetime`` adapter Feast registers with ``sqlite3`` (``int(datetime.timestamp())``);
    each distinct time converted once."""
    times = pd.to_datetime(column.to_numpy(zero_copy_only=False))
    distinct, rows = np.unique(np.asarray(times), return_inverse=True)
    stored: list[int | None] = []
    for value in pd.to_datetime(distinct):
        stored.append(None if pd.isna(value) else int(to_naive_utc(value.to_pydatetime()).timestamp()))
    return [stored[row] for row in rows.tolist()]
