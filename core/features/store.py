"""The Feast adapter: configuration, ``apply``, the online store's writes, and the reads serving needs.

``import feast`` costs seconds, so this module is imported only by the commands that use Feast.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog
import yaml
from endcap.errors import FailedPrecondition
from endcap.feature_repo import definitions
from endcap.features import feast_env  # noqa: F401  (before Feast: keeps our metrics in memory)
from endcap.features.sqlite_writer import bulk_writer
from endcap.features.tables import PRODUCT_STATS_COLUMNS, USER_CLOCK_COLUMNS, USER_PRODUCT_COLUMNS, USER_STATS_COLUMNS
from endcap.workspace import Workspace
from feast import FeatureStore, RepoConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

if TYPE_CHECKING:
    from endcap.config import FeatureStoreConfig
    from endcap.features.row_locks import RowLock
    from endcap.features.sqlite_rows import SqliteRows

# ibis (Feast's DuckDB offline store) calls a DuckDB method DuckDB has deprecated; nothing to act on here.
warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)

USER_COLUMNS = (*USER_STATS_COLUMNS, *USER_CLOCK_COLUMNS, "item_ids", *USER_PRODUCT_COLUMNS)
USER_FEATURES = [f"{definitions.USER_STATS}:{c}" for c in USER_COLUMNS]
PRODUCT_FEATURES = [f"{definitions.PRODUCT_STATS}:{c}" for c in PRODUCT_STATS_COLUMNS]


log = structlog.get_logger("endcap.features")

PROFILE_FILES = {"local": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def feature_store_settings(workspace: Workspace, feature_store: FeatureStoreConfig | None) -> FeatureStoreConfig:
    """``feature_store`` as given (the ``feature_store`` section of the configuration the caller
    loaded); ``None`` reads it from the workspace's ``endcap.yaml``, for callers that do not
    hold the configuration."""
    if feature_store is not None:
        return feature_store
    from endcap.config import load_config

    return load_config(workspace.root).feature_store


def repo_config(workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> RepoConfig:
    """The Feast configuration of ``feature_store.profile``: ``feature_repo/feature_store.yaml``
    (local) or ``feature_store.redis.yaml``, with the workspace, the Redis connection string and
    the registry path filled in (``feature_store``: see :func:`feature_store_settings`)."""
    settings = feature_store_settings(workspace, feature_store)
    registry = settings.registry or workspace.feast / "registry.db"
    text = files("endcap.feature_repo").joinpath(PROFILE_FILES[settings.profile]).read_text()
    for name, value in (
        ("ENDCAP_WORKSPACE", str(workspace.root)),
        ("ENDCAP_REDIS", settings.redis),
        ("ENDCAP_FEAST_REGISTRY", str(registry)),
    ):
        text = text.replace("${" + name + "}", value)
    raw = yaml.safe_load(text)
    raw["registry"]["path"] = str(registry)
    config = RepoConfig(**raw)
    config.repo_path = workspace.feast
    return config


def open_store(workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> FeatureStore:
    """The workspace's Feast store, created when missing (``feature_store``: see :func:`feature_store_settings`)."""
    workspace.feast.mkdir(parents=True, exist_ok=True)
    config = repo_config(workspace, feature_store)
    Path(config.registry.path).parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=config)


@dataclass(frozen=True)
class MaterializeSummary:
    tables: Mapping[str, int]
    as_of: pd.Timestamp
    materialized_from: pd.Timestamp
    """Start of the window a materialization would move: the previous run's newest snapshot
    (``full``: the oldest). The online store gets the newest snapshot, which holds everyone."""


@dataclass(frozen=True)
class WrittenTables:
    rows: Mapping[str, int]
    """Rows per table, over every snapshot."""
    oldest: pd.Timestamp
    as_of: pd.Timestamp
    """The newest snapshot's time."""
    newest: Mapping[str, pd.DataFrame]
    """The newest snapshot (every user and product of the log): what the online store holds."""


def write_tables(
    workspace: Workspace,
    snapshots: Iterable[Mapping[str, pd.DataFrame]],
    training_users: Mapping[str, Any] | None = None,
) -> WrittenTables:
    """Write the offline tables one snapshot at a time (a row group each), so memory holds one
    snapshot, not all of them (and the newest, kept for the online store); each file is moved
    into place when complete, and ``training_users`` (whose rows the training snapshots hold,
    see :func:`training_users_record`) is recorded beside them as they are."""
    import pyarrow.parquet as pq

    workspace.features.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    rows: dict[str, int] = {}
    oldest, as_of = pd.Timestamp.max.tz_localize("UTC"), pd.Timestamp.min.tz_localize("UTC")
    newest: Mapping[str, pd.DataFrame] = {}
    try:
        for snapshot in snapshots:
            stamped = max(frame["event_timestamp"].max() for frame in snapshot.values())
            if stamped >= as_of:
                newest = snapshot
            for name, frame in snapshot.items():
                table = _offline_table(frame)
                if name not in writers:
                    partial = workspace.features / f"{name}.parquet.partial"
                    writers[name] = pq.ParquetWriter(partial, table.schema)
                writers[name].write_table(table.cast(writers[name].schema))
                rows[name] = rows.get(name, 0) + len(frame)
                oldest = min(oldest, frame["event_timestamp"].min())
                as_of = max(as_of, frame["event_timestamp"].max())
            log.info("feature_snapshot_written", **{name: len(frame) for name, frame in snapshot.items()})
    finally:
        for writer in writers.values():
            writer.close()
    for name in writers:
        os.replace(workspace.features / f"{name}.parquet.partial", workspace.features / f"{name}.parquet")
    record = workspace.features / TRAINING_USERS_FILE
    if training_users is None:
        record.unlink(missing_ok=True)
    else:
        record.with_suffix(".partial").write_text(json.dumps(training_users))
        os.replace(record.with_suffix(".partial"), record)  # whole, like the tables beside it
    return WrittenTables(rows, oldest, as_of, newest)


ONLINE_BATCH_ROWS = 20_000
"""Rows converted and written to the online store at a time: Feast turns each value into a
protobuf object, so memory follows the batch, not the million users."""


def write_online(store: FeatureStore, snapshot: Mapping[str, pd.DataFrame], views: Mapping[str, Any]) -> None:
    """``snapshot``'s tables into the online store through their ``views`` (by name), a batch at
    a time: in bulk into SQLite (:mod:`endcap.features.sqlite_writer`), else through Feast."""
    for name, frame in snapshot.items():
        bulk = bulk_writer(store, views[name])
        for start in range(0, len(frame), ONLINE_BATCH_ROWS):
            rows = frame.iloc[start : start + ONLINE_BATCH_ROWS]
            if bulk is None:
                store.write_to_online_store(name, rows)
            else:
                bulk(rows)


def _offline_table(frame: pd.DataFrame) -> Any:
    """A snapshot as the offline store keeps it: plain Arrow types (``string``, ``list<string>``)
    and no pandas metadata, whichever pandas dtypes computed it."""
    import pyarrow as pa

    def plain(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(kind):
            return pa.string()
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return pa.list_(plain(kind.value_type))
        return kind

    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema = pa.schema([pa.field(field.name, plain(field.type)) for field in table.schema])
    return table.cast(schema).replace_schema_metadata(None)


def write_and_materialize(
    workspace: Workspace,
    snapshots: Iterable[Mapping[str, pd.DataFrame]],
    extra_objects: Sequence[Any] = (),
    full: bool = False,
    expected: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    feature_store: FeatureStoreConfig | None = None,
    training_users: Mapping[str, Any] | None = None,
) -> MaterializeSummary:
    """Write the offline tables, ``apply`` the definitions (Endcap's and ``extra_objects`` from
    plugins), and fill the online store.

    Every window is on the log's own timeline, never the machine's clock: it ends just after the
    newest snapshot, whatever year the log is from. The newest snapshot holds every user and
    product, and the online store keeps one row per entity, so Endcap's views are written from
    that snapshot as computed (:func:`write_online`), without reading it back from the offline
    store; ``materialized_from`` reports the window a materialization would have moved (from the
    newest snapshot the previous run wrote; ``full``: from the oldest). Plugins' views are
    materialized by Feast and always take all of time: the newest row per entity wins, whatever
    its timestamp.

    ``expected`` (view name → the ids the log has) is checked against the online store once it
    is written: when ids are missing the run fails with :class:`IncompleteMaterialization`
    and is not recorded as done, so the next run materializes again.
    """
    from endcap.features.coverage import IncompleteMaterialization, missing_ids

    written = write_tables(workspace, snapshots, training_users)
    as_of = written.as_of
    store = open_store(workspace, feature_store)
    endcap_views = definitions.build(workspace.root)
    store.apply([*endcap_views.all(), *extra_objects])
    end = as_of + pd.Timedelta(seconds=1)
    state_file = workspace.feast / "materialized.json"
    previous = None if not state_file.exists() else pd.Timestamp(json.loads(state_file.read_text())["as_of"])
    if full:
        start = written.oldest - pd.Timedelta(seconds=1)
    elif previous is not None and previous <= as_of:
        start = previous
    else:
        start = as_of
    ours = [view.name for view in endcap_views.views()]
    log.info("writing_online_store", views=ours, as_of=as_of.isoformat())
    views = {view.name: view for view in endcap_views.views()}
    write_online(store, {view: frame for view, frame in written.newest.items() if view in ours}, views)
    theirs = [view.name for view in extra_objects if hasattr(view, "entities") and view.name not in ours]
    if theirs:
        store.materialize(start_date=ALL_TIME[0], end_date=ALL_TIME[1], feature_views=theirs)
    missing = {view: missing_ids(store, view, ids, as_of) for view, ids in (expected or {}).items()}
    if any(missing.values()):
        raise IncompleteMaterialization(missing, {view: len(ids) for view, ids in (expected or {}).items()}, start, end)
    state_file.write_text(json.dumps({"as_of": as_of.isoformat()}))
    return MaterializeSummary(written.rows, as_of, start)


ALL_TIME = (datetime(1900, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""The materialization window of plugins' views: their rows keep timestamps of their own."""


def build_features(
    workspace: Workspace,
    log: pd.DataFrame,
    host: Any = None,
    full: bool = False,
    feature_store: FeatureStoreConfig | None = None,
    plugin_data: Path | None = None,
) -> MaterializeSummary:
    """Everything ``endcap features`` does: the tables with their point-in-time snapshots, Feast
    ``apply`` (with the plugins' own definitions when ``host`` is given; their data files are
    under ``plugin_data``, default the workspace's ``features/``), materialization of
    the newest snapshot into the online store, keeping the rows real-time purchases pushed
    (:mod:`endcap.features.pushed_rows`), and a check that the store now holds every user and product of
    ``log``. ``feature_store``: see :func:`feature_store_settings`."""
    from endcap.config import TrainingConfig
    from endcap.features.pushed_rows import keeping_pushed_rows
    from endcap.features.tables import feature_cutoffs, iter_snapshots, sampled_users

    extra = host.feast_objects(plugin_data or workspace.features) if host is not None else []
    expected = {
        definitions.USER_STATS: log["user_id"].unique(),
        definitions.PRODUCT_STATS: log["item_id"].unique(),
    }
    training = host.config.training if host is not None else TrainingConfig()
    sample = sampled_users(log["user_id"], training.ranking_users)
    cutoffs = _after_previous_run(workspace, feature_cutoffs(log, training.label_baskets, sample))
    with keeping_pushed_rows(
        workspace, feature_store
    ):  # real-time purchases not yet in the log stay in the online rows
        snapshots = iter_snapshots(log, cutoffs=cutoffs, training_users=sample)
        record = training_users_record(len(expected[definitions.USER_STATS]), sample)
        return write_and_materialize(workspace, snapshots, extra, full, expected, feature_store, record)


TRAINING_USERS_FILE = "training_users.json"
"""Whose rows the offline store's training snapshots hold (:func:`training_users_record`),
checked by :meth:`HistoricalFeatures.require_training_users`."""


def training_users_record(users: int, sample: np.ndarray | None) -> dict[str, Any]:
    """The log's number of users, and the sample of them (``training.ranking_users``) whose rows
    the training snapshots hold: its size and a digest of its ids; everyone when ``None``."""
    import hashlib

    if sample is None:
        return {"users": users, "sampled": users, "digest": "everyone"}
    digest = hashlib.sha256("\n".join(map(str, sample)).encode()).hexdigest()
    return {"users": users, "sampled": len(sample), "digest": digest}


def _after_previous_run(workspace: Workspace, cutoffs: list[pd.Timestamp]) -> list[pd.Timestamp]:
    """``cutoffs`` with the serving snapshot (the last) stamped after the previous run's: a store
    that keeps only the newest write per row (Redis) would otherwise keep the old rows when the
    log gains older lines or is replaced by an older one. A snapshot stamped later than the log's
    newest line still holds the whole log."""
    state_file = workspace.feast / "materialized.json"
    if not state_file.exists():
        return cutoffs
    previous = pd.Timestamp(json.loads(state_file.read_text())["as_of"])
    if cutoffs[-1] > previous:
        return cutoffs
    return [*cutoffs[:-1], previous + pd.Timedelta(microseconds=1)]


def existing_store(workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> FeatureStore:
    """The workspace's feature store; :class:`FailedPrecondition` naming ``endcap features`` when
    it was never built (opening it does not create an empty registry). ``feature_store``: see
    :func:`feature_store_settings`."""
    store = open_store(workspace, feature_store)
    if not Path(store.config.registry.path).exists():
        raise FailedPrecondition(
            f"no feature store in {workspace.root} (registry {store.config.registry.path}); run 'endcap features' first"
        )
    return store


class OnlineFeatures:
    """Reads from the Feast online store: one lookup per user, all products at load time.

    The user's row is one indexed read: straight from the table Feast's SQLite online store
    writes (see :mod:`endcap.features.sqlite_rows`), or through the configured store's own
    ``online_read`` (Redis), either way skipping the SDK's per-call feature resolution and
    response building. Feast stays the system of record; this only reads what its
    materialization and push sources wrote.
    """

    def __init__(self, workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> None:
        self.store = existing_store(workspace, feature_store)
        self._online = self.store._get_provider().online_store
        self._user_view = self.store.get_feature_view(definitions.USER_STATS)
        self.columns = self._registered_columns()
        """The user row's columns the registered view defines (all of :data:`USER_COLUMNS` once
        ``endcap features`` has run with this Endcap); the others read as ``None``."""
        self._rows: SqliteRows | None = None
        """The SQLite row reader, which can also return rows as stored (see :meth:`user_raw`)."""
        self._read_user_row = self._row_reader()
        self.fast_reads_checked = self.check_fast_reads()
        """Whether the direct row read agreed with Feast's SDK at start (see :meth:`check_fast_reads`)."""

    def _registered_columns(self) -> tuple[str, ...]:
        registered = {feature.name for feature in self._user_view.features}
        missing = [column for column in USER_COLUMNS if column not in registered]
        if missing:
            import structlog

            structlog.get_logger("endcap.feature_store").warning(
                "feature_store_predates_columns",
                missing=missing,
                fix="run 'endcap features': until then these columns read as unknown",
            )
        return tuple(column for column in USER_COLUMNS if column in registered)

    def _row_reader(self) -> Any:
        """``user_id → (written at, values by feature)`` for the configured online store."""
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        config, view = self.store.config, self._user_view
        if isinstance(self._online, SqliteOnlineStore):
            from endcap.features.sqlite_rows import SqliteRows, feast_table

            database, table, key = feast_table(self.store, view, "user_id")
            self._rows = SqliteRows(database, table, key, self.columns)
            return self._rows.read

        def online_read(user_id: str) -> tuple[float | None, dict[str, ValueProto]]:
            key = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=user_id)])
            [(written, values)] = self._online.online_read(config, view, [key], list(self.columns))
            return (written.timestamp() if written is not None else None), values or {}

        return online_read

    def check_fast_reads(self, sample: int = 32) -> bool:
        """Read ``sample`` stored users both through the direct SQLite read and through Feast's
        ``get_online_features``; when any differs, log a warning and read every row through the
        SDK from now on (see :mod:`endcap.features.online_read_check`). Returns whether they agreed."""
        if self._rows is None:
            return True
        from endcap.features.online_read_check import disagreeing, sdk_row_reader
        from feast.infra.key_encoding_utils import deserialize_entity_key

        version = self.store.config.entity_key_serialization_version
        users = [
            deserialize_entity_key(key, version).entity_values[0].string_val for key in self._rows.sample_keys(sample)
        ]
        features = [f"{definitions.USER_STATS}:{column}" for column in self.columns]
        sdk = sdk_row_reader(self.store, features, self.columns, "user_id")
        differ = disagreeing(users, self.user, lambda user_id: self._row(sdk(user_id)[1], True))
        if not differ:
            return True
        import structlog

        structlog.get_logger("endcap.feature_store").warning(
            "fast_online_read_disagrees",
            users=differ[:10],
            disagreeing=len(differ),
            sampled=len(users),
            action="reading user rows through Feast's get_online_features (slower); "
            "check the Feast version against the one Endcap pins",
        )
        self._read_user_row, self._rows = sdk, None
        return False

    def user(self, user_id: str) -> dict[str, Any]:
        """The user's statistics and purchase arrays; values are ``None`` for a user the
        store holds no row for."""
        written, values = self._read_user_row(user_id)
        return self._row(values, self.fresh(written, bool(values)))

    def users(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`user` of each of ``user_ids``, in order: one query per few hundred users from
        SQLite (batch jobs), one lookup each from any other store."""
        if self._rows is None:
            return [self.user(user_id) for user_id in user_ids]
        return [
            self._row(values, self.fresh(written, bool(values))) for written, values in self._rows.read_many(user_ids)
        ]

    def user_row(self, user_id: str) -> tuple[float | None, dict[str, Any]]:
        """When the user's row was written (epoch seconds, ``None`` without a row) and its values
        as stored, whatever their age: what a read-modify-write of the row starts from."""
        written, values = self._read_user_row(user_id)
        return written, self._row(values, True)

    def row_lock(self) -> RowLock:
        """The lock every read-modify-write of user rows holds (see :mod:`endcap.features.row_locks`)."""
        from endcap.features.row_locks import row_lock_for

        return row_lock_for(self.store)

    def user_raw(self, user_id: str) -> tuple[float | None, tuple[bytes | None, ...]] | None:
        """The user's row as the store holds it (written at, serialized values): rows read as
        equal tuples are equal, so a caller can keep what it made of one. ``None`` from a store
        that cannot return rows as stored (Redis)."""
        return self._rows.read_raw(user_id) if self._rows is not None else None

    def user_from_raw(self, written: float | None, raws: tuple[bytes | None, ...]) -> dict[str, Any]:
        """:meth:`user` of a row read by :meth:`user_raw`."""
        if self._rows is None:
            raise TypeError("user_from_raw takes a row user_raw returned; this store returns none (use user)")
        values = self._rows.values(raws)
        return self._row(values, self.fresh(written, bool(values)))

    def fresh(self, written: float | None, stored: bool) -> bool:
        """Whether a row (``stored``: the store holds one) written at ``written`` is still valid:
        always, once stored. Rows never expire (see ``definitions.TTL``): a snapshot's age on the
        machine's clock says nothing about a log from another decade."""
        return stored

    @staticmethod
    def _row(values: Mapping[str, ValueProto], fresh: bool) -> dict[str, Any]:
        return {column: _python_value(values.get(column)) if fresh else None for column in USER_COLUMNS}

    def push(self, view: str, rows: pd.DataFrame) -> None:
        """Write ``rows`` (join key, features, ``event_timestamp``) to the online store through
        ``view``'s push source."""
        from feast.data_source import PushMode

        self.store.push(definitions.push_source_name(view), rows, to=PushMode.ONLINE)

    def products(self, item_ids: Sequence[str]) -> pd.DataFrame:
        """Product statistics for ``item_ids`` in that order; missing products are NaN."""
        frame = self.product_features(PRODUCT_FEATURES, item_ids)
        numeric: pd.DataFrame = frame[list(PRODUCT_STATS_COLUMNS)].apply(pd.to_numeric, errors="coerce")
        return numeric.astype(np.float32)

    def product_features(self, references: Sequence[str], item_ids: Sequence[str]) -> pd.DataFrame:
        """Any product-keyed features (``"view:feature"`` references) for ``item_ids``, in that
        order, one column per feature (named without the view); missing values are NaN/None."""
        rows = [{"item_id": item_id} for item_id in item_ids]
        frame = self.store.get_online_features(features=list(references), entity_rows=rows).to_df()
        columns: pd.DataFrame = frame[[r.split(":", 1)[1] for r in references]]
        return columns


def _python_value(value: ValueProto | None) -> Any:
    """A stored Feast value as Python: a scalar, a list for array types, ``None`` when unset."""
    if value is None:
        return None
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    stored = getattr(value, kind)
    return list(stored.val) if kind.endswith("_list_val") else stored
