"""Materialization never rolls back real-time purchases.

``RecordEvents`` pushes a buyer's updated row to the online store; the purchase reaches the
offline store only when ``endcap retrain`` folds the event log in. A plain ``endcap features``
in between would write the newest snapshot, which knows nothing of those purchases, over the
pushed rows (the SQLite store overwrites unconditionally; Redis keeps the newest write, but a
snapshot can be newer than a push). So, around a materialization, the rows of every user with
purchases in the event log past what the offline log holds are read before and written back
after, with the online store's row lock held throughout (:mod:`endcap.features.row_locks`), so no push
slips between the two: a purchase waits for the run instead of being lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import structlog
from endcap.data.events import EventLog
from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.config import FeatureStoreConfig

log = structlog.get_logger("endcap.pushed_rows")

LEASE_SECONDS = 3600.0
"""How long a materialization may hold a lock that has leases (Redis) before it is presumed dead."""


def pending_purchasers(workspace: Workspace) -> set[str]:
    """Users with purchases in the event log that the offline log does not hold yet (past the
    offset ``endcap retrain`` has folded in)."""
    state = workspace.root / "data" / "retrain.json"
    offset = int(json.loads(state.read_text())["event_offset"]) if state.exists() else 0
    events, _ = EventLog(workspace.events_log).read_from(offset)
    return {e.user_id for e in events if e.type == "purchase"}


@contextmanager
def keeping_pushed_rows(workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> Iterator[None]:
    """Run the body (a materialization) without losing pushed rows (see the module docstring);
    ``feature_store`` is the workspace's store (see :func:`endcap.features.store.feature_store_settings`)."""
    from endcap.features.store import open_store

    users = pending_purchasers(workspace) if workspace.events_log.exists() else set()
    if not users or not Path(open_store(workspace, feature_store).config.registry.path).exists():
        yield
        return
    from endcap.features.store import OnlineFeatures

    online = OnlineFeatures(workspace, feature_store)
    with online.row_lock().hold(lease_seconds=LEASE_SECONDS):
        saved = {user_id: online.user_row(user_id) for user_id in sorted(users)}
        try:
            yield
        finally:
            restored = _restore(online, {u: row for u, row in saved.items() if row[0] is not None})
            if restored:
                log.info("pushed_rows_restored", users=restored, pending_purchasers=len(users))


def _restore(online: Any, saved: dict[str, tuple[float | None, dict[str, Any]]]) -> int:
    """Push back every saved row the materialization changed, stamped newer than what it wrote."""
    from endcap.features.realtime import pushed_timestamp, with_every_column
    from endcap.features.store import USER_COLUMNS

    rows = []
    for user_id, (written, row) in saved.items():
        now_written, now_row = online.user_row(user_id)
        if now_row == row:
            continue
        stamp = pushed_timestamp(float(written or 0.0), now_written)
        values = {column: row[column] for column in USER_COLUMNS}
        if row.get("orders") is not None:
            values = with_every_column(values)  # a row an earlier Endcap pushed, on today's columns
        rows.append({"user_id": user_id, **values, "event_timestamp": stamp, "created_timestamp": stamp})
    if rows:
        online.push("user_stats", pd.DataFrame(rows))
    return len(rows)
