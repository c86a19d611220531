"""Does the online store hold what the log (or a model) needs? Counted, never assumed.

A materialization can write nothing without an error (a window that misses the log's dates, a
store profile pointing elsewhere), and serving would then treat every shopper as a stranger.
``endcap features``, ``endcap train`` and ``endcap serve`` each ask here first and refuse, with
the count and the likely cause, when ids are missing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from endcap.errors import FailedPrecondition
from endcap.feature_repo.definitions import PRODUCT_STATS, USER_STATS

BATCH = 2000
"""Keys per ``online_read`` on stores without a direct path (Redis)."""
EXAMPLES = 3

NOUNS = {USER_STATS: "users", PRODUCT_STATS: "products"}


@dataclass(frozen=True)
class MissingIds:
    """How many of ``total`` ids a view lacks, with a few of them to look up by hand."""

    count: int
    total: int
    examples: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.count > 0

    def describe(self, noun: str, examples: bool = True) -> str:
        """``"3 of 40 users (e.g. 'a', 'b', 'c')"``; without the ids when the text leaves the
        server (they are shoppers' ids)."""
        shown = ", ".join(repr(e) for e in self.examples)
        return f"{self.count} of {self.total} {noun}" + (f" (e.g. {shown})" if examples and shown else "")


def missing_ids(
    store: Any, view_name: str, ids: Sequence[str] | np.ndarray, written_since: pd.Timestamp | None = None
) -> MissingIds:
    """The ids among ``ids`` for which the online store holds no row of ``view_name``.

    :param written_since: on a store that keeps only the newest write per row (Redis), a row
        stamped before this (the snapshot just materialized) counts as missing too: it is an
        older run's, which the store kept instead of this one's. SQLite overwrites every row.
    """
    from feast.errors import FeastObjectNotFoundException
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    unique: np.ndarray = pd.unique(np.asarray(ids, dtype=object))
    try:
        view = store.get_feature_view(view_name)
    except FeastObjectNotFoundException as exc:
        raise FailedPrecondition(f"the feature store has no view {view_name!r}; run 'endcap features' first") from exc
    online = store._get_provider().online_store
    if isinstance(online, SqliteOnlineStore):
        present = _sqlite_present(store, view, unique)
    else:
        present = _read_present(store, online, view, unique, written_since)
    absent = unique[~present]
    return MissingIds(int(absent.size), int(unique.size), tuple(str(i) for i in absent[:EXAMPLES]))


def _join_key(view: Any) -> str:
    [column] = view.entity_columns
    return str(column.name)


def _sqlite_present(store: Any, view: Any, ids: np.ndarray) -> np.ndarray:
    """One scan of the view's table: the set of keys written, each id's key looked up in it."""
    from endcap.features.sqlite_rows import feast_table

    database, table, encode = feast_table(store, view, _join_key(view))
    if not database.exists():
        return np.zeros(ids.size, dtype=bool)
    quoted = '"' + table.replace('"', '""') + '"'
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        written = {key for (key,) in connection.execute(f"SELECT DISTINCT entity_key FROM {quoted}")}
    except sqlite3.OperationalError:  # no such table: nothing was ever written to the view
        written = set()
    finally:
        connection.close()
    return np.fromiter((encode(str(i)) in written for i in ids), dtype=bool, count=ids.size)


def _read_present(
    store: Any, online: Any, view: Any, ids: np.ndarray, written_since: pd.Timestamp | None
) -> np.ndarray:
    """Through the store's own ``online_read``, a batch of keys at a time. A key the store lacks
    can still come back with empty values (Redis answers every key), so a row is present only
    when a value is set, and, with ``written_since``, when it was written no earlier."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    join_key = _join_key(view)
    feature = view.features[0].name
    since = None if written_since is None else pd.Timestamp(written_since)
    present = np.zeros(ids.size, dtype=bool)
    for start in range(0, ids.size, BATCH):
        keys = [
            EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=str(i))])
            for i in ids[start : start + BATCH]
        ]
        rows = online.online_read(store.config, view, keys, [feature])
        present[start : start + len(keys)] = [_current(written, values, since) for written, values in rows]
    return present


def _current(written: Any, values: Mapping[str, Any] | None, since: pd.Timestamp | None) -> bool:
    """Whether an ``online_read`` result is a stored row (a value set) written at ``since`` or later."""
    if not values or not any(value.WhichOneof("val") not in (None, "null_val") for value in values.values()):
        return False
    if since is None:
        return True
    stamp = pd.Timestamp(written) if written is not None else None
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp is not None and stamp >= since - pd.Timedelta(milliseconds=1)


class IncompleteMaterialization(FailedPrecondition):
    """The online store lacks users or products of the log after ``endcap features`` wrote it."""

    def __init__(
        self, missing: Mapping[str, MissingIds], expected: Mapping[str, int], start: pd.Timestamp, end: pd.Timestamp
    ) -> None:
        lacking = " and ".join(found.describe(NOUNS.get(view, view)) for view, found in missing.items() if found)
        super().__init__(
            f"the online store lacks current rows for {lacking} of the purchase log after materializing the "
            "snapshots dated "
            f"{start.isoformat()} to {end.isoformat()}; nothing was recorded as materialized. Check that "
            "feature_store.profile in endcap.yaml names the store you read, then run 'endcap features --full'"
        )
        self.missing = dict(missing)
        self.expected = dict(expected)


def check_users_stored(
    has_row: Callable[[Sequence[str] | np.ndarray], MissingIds],
    user_ids: Sequence[str] | np.ndarray,
    what: str,
    then: str,
    tolerance: float = 0.0,
    examples: bool = True,
) -> None:
    """Raise :class:`FailedPrecondition` naming how many of ``user_ids`` have no online row, when
    more than ``tolerance`` (a share) of them have none.

    :param has_row: counts the ids without a row (:func:`missing_ids` bound to a store and view,
        or :func:`sampled_user_rows`).
    :param what: what is refused, for the message ("model not written").
    :param then: what to do about it.
    :param examples: name a few of the ids (not when the message goes to callers).
    """
    missing = has_row(user_ids)
    if missing.count > tolerance * missing.total:
        raise FailedPrecondition(
            f"{what}: the online store lacks {missing.describe('users', examples)} of the log; {then}"
        )


def sampled_user_rows(
    read_user: Callable[[str], Mapping[str, Any]], sample: int = 2000, seed: int = 0
) -> Callable[[Sequence[str] | np.ndarray], MissingIds]:
    """A ``has_row`` for :func:`check_users_stored` that reads a seeded sample of at most
    ``sample`` users one by one (the serving read), so a server checks its model against the store
    in milliseconds whatever the catalogue's size; ``total`` is then the sample's size."""

    def has_row(user_ids: Sequence[str] | np.ndarray) -> MissingIds:
        ids = np.asarray(user_ids, dtype=object)
        if ids.size > sample:
            ids = np.random.default_rng(seed).choice(ids, sample, replace=False)
        absent = [str(i) for i in ids if read_user(str(i)).get("orders") is None]
        return MissingIds(len(absent), int(ids.size), tuple(absent[:EXAMPLES]))

    return has_row


SERVING_TOLERANCE = 0.01
"""Share of a model's sampled users the online store may lack before a server refuses the model:
a few rows gone (evicted, deleted) are answered from the model and counted; a store built from
another log is refused."""


def check_model_against_store(model: Any, read_user: Callable[[str], Mapping[str, Any]]) -> None:
    """Refuse to serve ``model`` (a :class:`ServingModel`) when more than
    :data:`SERVING_TOLERANCE` of a sample of its users have no row in the online store: the store
    was built from another log, or not materialized.

    :raises FailedPrecondition: with the count and what to run (no user ids: callers see it).
    """
    check_users_stored(
        sampled_user_rows(read_user),
        model.catalog.user_ids,
        f"model {model.version} does not match the online store (a sample of its users)",
        "run 'endcap features' on the log the model was trained on, or promote a model trained on the store's log",
        tolerance=SERVING_TOLERANCE,
        examples=False,
    )
