"""Real-time user features: a recorded purchase updates the buyer's online rows at once.

``RecordEvents`` hands its purchases here after they are durably logged. Each user's purchases
in one call count as one new order: the user's statistics and purchase arrays are read from the
online store, brought up to date (``orders`` + 1, ``times_bought`` + 1 and
``orders_since_last_bought`` = 0 for what was bought, + 1 for the rest, ``orders_since_first_bought``
+ 1, 0 for a first purchase; ``last_order_day`` and each bought product's ``last_bought_day`` to
the day of the call's first purchase), and pushed back through
the ``user_stats`` view's Feast push source, so the very next ``Recommend`` sees them. The events
log stays the record of what happened: the next ``endcap retrain`` folds it into the offline store.

Every worker and replica writes the same rows, so the read-modify-push holds the online store's
row lock (:mod:`endcap.features.row_locks`), shared by processes and replicas: each purchase reaches the
row exactly once. A pushed row is stamped with data time, the newest of its events' own
timestamps, but never at or before the row it replaces (then 1 ms after it): Feast's Redis store
drops a write that is not newer than the stored row, and the push must always be the newest
write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from endcap.features.row_locks import RowLock
from endcap.types import Event

STEP_SECONDS = 0.001
"""How far past the stored row's timestamp a push is stamped when its events are not newer."""


def pushed_timestamp(newest_event: float, stored: float | None) -> pd.Timestamp:
    """The event time of a pushed row: ``newest_event`` (epoch seconds), or ``STEP_SECONDS``
    after the ``stored`` row's time when that is not older, so the push is the newest write."""
    seconds = newest_event if stored is None else max(newest_event, stored + STEP_SECONDS)
    return pd.Timestamp(round(seconds * 1e6), unit="us", tz="UTC")


UNKNOWN = -1
"""What a row written before a column existed holds in it (counts and days are never negative)."""
NEWER_ARRAYS = ("orders_since_first_bought", "last_bought_day", "first_bought_day")


def with_every_column(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the columns a row written by an earlier Endcap lacks (``None``) filled with
    :data:`UNKNOWN`, one per item for the per-item arrays, so it can be pushed and read."""
    complete = dict(row)
    items = len(complete.get("item_ids") or [])
    for name in NEWER_ARRAYS:
        if complete.get(name) is None:
            complete[name] = [UNKNOWN] * items
    if complete.get("last_order_day") is None:
        complete["last_order_day"] = float(UNKNOWN)
    return complete


def updated_user_row(current: Mapping[str, Any], purchased: Sequence[str], day: float) -> dict[str, Any]:
    """The user's ``user_stats`` values (statistics and purchase arrays) after one more order
    holding ``purchased`` (item ids) on ``day`` (days since 1970, UTC); ``current`` is
    :meth:`OnlineFeatures.user`'s row (all ``None`` for a user the store has not seen)."""
    basket = list(dict.fromkeys(purchased))
    orders_before = int(current.get("orders") or 0)
    orders = orders_before + 1
    item_ids = list(current.get("item_ids") or [])
    times = [int(t) for t in current.get("times_bought") or [0] * len(item_ids)]
    since = [int(s) + 1 for s in current.get("orders_since_last_bought") or [0] * len(item_ids)]
    current = with_every_column(current)
    since_first = [int(s) + 1 if s >= 0 else UNKNOWN for s in current["orders_since_first_bought"]]
    last_day = [float(d) for d in current["last_bought_day"]]
    first_day = [float(d) for d in current["first_bought_day"]]
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    for item_id in basket:
        i = position.get(item_id)
        if i is None:
            position[item_id] = len(item_ids)
            item_ids.append(item_id)
            times.append(1)
            since.append(0)
            since_first.append(0)
            last_day.append(day)
            first_day.append(day)
        else:
            times[i] += 1
            since[i] = 0
            last_day[i] = max(last_day[i], day)
    average = float(current.get("avg_basket_size") or 0.0)
    return {
        "orders": orders,
        "avg_basket_size": (average * orders_before + len(basket)) / orders,
        "avg_days_between_orders": float(current.get("avg_days_between_orders") or 0.0),
        "distinct_items": len(item_ids),
        "last_order_day": max(float(current["last_order_day"]), day),
        "item_ids": item_ids,
        "times_bought": times,
        "orders_since_last_bought": since,
        "orders_since_first_bought": since_first,
        "last_bought_day": last_day,
        "first_bought_day": first_day,
    }


class RealtimeFeatures:
    """Applies recorded purchases to the online store (see the module docstring)."""

    def __init__(
        self,
        read_user: Callable[[str], tuple[float | None, dict[str, Any]]],
        push: Callable[[str, pd.DataFrame], None],
        lock: RowLock,
    ) -> None:
        self.read_user = read_user
        """``user_id → (written at, row)``, whatever the row's age (``OnlineFeatures.user_row``)."""
        self.push = push
        self.lock = lock

    def apply(self, events: Sequence[Event]) -> int:
        """Push updated rows for every user with purchases among ``events``; returns the users updated."""
        baskets: dict[str, list[str]] = defaultdict(list)
        newest: dict[str, float] = {}
        oldest: dict[str, float] = {}
        for event in events:
            if event.type == "purchase":
                baskets[event.user_id].append(event.item_id)
                newest[event.user_id] = max(newest.get(event.user_id, event.timestamp), event.timestamp)
                oldest[event.user_id] = min(oldest.get(event.user_id, event.timestamp), event.timestamp)
        if not baskets:
            return 0
        with self.lock.hold():
            rows = []
            for user_id, items in baskets.items():
                written, current = self.read_user(user_id)
                row = updated_user_row(current, items, oldest[user_id] / 86_400.0)  # an order dates from its start
                stamp = pushed_timestamp(newest[user_id], written)
                rows.append({"user_id": user_id, **row, "event_timestamp": stamp, "created_timestamp": stamp})
            self.push("user_stats", pd.DataFrame(rows))
        return len(baskets)
