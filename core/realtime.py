"""Real-time user features: a recorded purchase updates the buyer's online rows at once.

``RecordEvents`` hands its purchases here after they are durably logged. Each user's purchases
in one call count as one new order: the user's statistics and purchase arrays are read from the
online store, brought up to date (``orders`` + 1, ``times_bought`` + 1 and
``orders_since_last_bought`` = 0 for what was bought, + 1 for the rest), and pushed back through
the ``user_stats`` view's Feast push source, so the very next ``Recommend`` sees them. The events
log stays the record of what happened: the next ``endcap retrain`` folds it into the offline store.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from endcap.types import Event


def updated_user_row(current: Mapping[str, Any], purchased: Sequence[str]) -> dict[str, Any]:
    """The user's ``user_stats`` values (statistics and purchase arrays) after one more order
    holding ``purchased`` (item ids); ``current`` is :meth:`OnlineFeatures.user`'s row (all
    ``None`` for a user the store has not seen)."""
    basket = list(dict.fromkeys(purchased))
    orders_before = int(current.get("orders") or 0)
    orders = orders_before + 1
    item_ids = list(current.get("item_ids") or [])
    times = [int(t) for t in current.get("times_bought") or [0] * len(item_ids)]
    since = [int(s) + 1 for s in current.get("orders_since_last_bought") or [0] * len(item_ids)]
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    for item_id in basket:
        i = position.get(item_id)
        if i is None:
            position[item_id] = len(item_ids)
            item_ids.append(item_id)
            times.append(1)
            since.append(0)
        else:
            times[i] += 1
            since[i] = 0
    average = float(current.get("avg_basket_size") or 0.0)
    return {
        "orders": orders,
        "avg_basket_size": (average * orders_before + len(basket)) / orders,
        "avg_days_between_orders": float(current.get("avg_days_between_orders") or 0.0),
        "distinct_items": len(item_ids),
        "item_ids": item_ids,
        "times_bought": times,
        "orders_since_last_bought": since,
    }


class RealtimeFeatures:
    """Applies recorded purchases to the online store (see the module docstring)."""

    def __init__(self, read_user: Callable[[str], dict[str, Any]], push: Callable[[str, pd.DataFrame], None]) -> None:
        self.read_user = read_user
        self.push = push
        self._lock = threading.Lock()
        """One read-modify-push at a time in this process, so two calls for a user cannot lose an order."""

    def apply(self, events: Sequence[Event]) -> int:
        """Push updated rows for every user with purchases among ``events``; returns the users updated."""
        baskets: dict[str, list[str]] = defaultdict(list)
        for event in events:
            if event.type == "purchase":
                baskets[event.user_id].append(event.item_id)
        if not baskets:
            return 0
        now = pd.Timestamp.now(tz="UTC")
        with self._lock:
            rows = []
            for user_id, items in baskets.items():
                row = updated_user_row(self.read_user(user_id), items)
                rows.append({"user_id": user_id, **row, "event_timestamp": now, "created_timestamp": now})
            self.push("user_stats", pd.DataFrame(rows))
        return len(baskets)
