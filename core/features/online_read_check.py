"""The fast online read, checked against Feast's own.

Serving reads a user's row straight from the table Feast's SQLite online store writes
(:mod:`endcap.features.sqlite_rows`), which depends on how Feast lays that table out: its key encoding,
one row per feature, serialized values. A Feast upgrade could change any of it. So at start-up
``OnlineFeatures`` reads a sample of stored users both ways, through the direct read and through
``FeatureStore.get_online_features``; when any user differs it logs a warning naming them and
reads every row through the SDK from then on (slower, never wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

RowRead = Callable[[str], tuple[float | None, Mapping[str, ValueProto]]]
"""``user_id → (written at, values by feature)``, the shape of every user-row reader."""


def sdk_row_reader(store: Any, features: Sequence[str], columns: Sequence[str], join_key: str) -> RowRead:
    """A row reader through Feast's SDK (``get_online_features``): what the store holds for the
    user as Feast itself returns it (rows older than the view's TTL left out, as Feast does)."""
    wanted = set(columns)

    def read(user_id: str) -> tuple[float | None, dict[str, ValueProto]]:
        response = store.get_online_features(features=list(features), entity_rows=[{join_key: user_id}]).proto
        values: dict[str, ValueProto] = {}
        written: float | None = None
        for name, vector in zip(response.metadata.feature_names.val, response.results, strict=True):
            if name in wanted and vector.statuses[0] == FieldStatus.PRESENT:
                values[name] = vector.values[0]
                stamp = vector.event_timestamps[0]
                seconds = stamp.seconds + stamp.nanos / 1e9
                written = seconds if written is None else max(written, seconds)
        return written, values

    return read


def disagreeing(
    user_ids: Sequence[str], fast: Callable[[str], dict[str, Any]], sdk: Callable[[str], dict[str, Any]]
) -> list[str]:
    """The users whose rows (as ``OnlineFeatures.user`` returns them) differ between the readers."""
    return [user_id for user_id in user_ids if fast(user_id) != sdk(user_id)]
