"""``user_stats``, ``product_stats``, ``user_product``: Endcap's own ranking features, as feature
providers written like any third party's.

* ``user_stats``: the user's order count, basket size, days between orders and distinct items
  (their online row; the same for every candidate).
* ``product_stats``: each product's purchases, distinct buyers and reorder rate (Feast's
  ``product_stats`` view).
* ``user_product``: how often the user bought the candidate, the share of their orders that
  held it, and how many orders ago they last bought it (their online row's arrays).
* ``cadence``: the user's own rhythm with the candidate, counted in their orders: the mean
  interval between their purchases of it, how due it is (orders since the last purchase against
  that interval), and how often they bought it since they first did; :data:`UNKNOWN` for a
  candidate the user bought fewer than twice.
* ``calendar``: the same in days, measured from when the shopper is answered
  (``Query.as_of``; without it, the newest day the data knows: the training log's last
  purchase or the user's own newer one): days since their last order and against their usual
  gap, days since they last bought the candidate and against their usual interval for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
from endcap.features.tables import PRODUCT_STATS_COLUMNS, PRODUCT_STATS_VIEW, USER_STATS_COLUMNS

USER_PRODUCT_NAMES = ("times_bought", "bought_share", "orders_since_last_bought")


class UserStatsFeatures(endcap.FeatureProvider):
    def names(self) -> tuple[str, ...]:
        return tuple(f"user.{column}" for column in USER_STATS_COLUMNS)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        row = np.array([user.stats.get(column, 0.0) for column in USER_STATS_COLUMNS], dtype=np.float32)
        return np.broadcast_to(row, (ids.size, row.size))


class ProductStatsFeatures(endcap.FeatureProvider):
    def product_references(self) -> tuple[str, ...]:
        return tuple(f"{PRODUCT_STATS_VIEW}:{column}" for column in PRODUCT_STATS_COLUMNS)

    def names(self) -> tuple[str, ...]:
        return tuple(f"product.{column}" for column in PRODUCT_STATS_COLUMNS)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        block: np.ndarray = np.nan_to_num(products[ids], copy=False)  # a product the store lacks: zero statistics
        return block


class UserProductFeatures(endcap.FeatureProvider):
    def names(self) -> tuple[str, ...]:
        return tuple(f"user_product.{name}" for name in USER_PRODUCT_NAMES)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        block = np.zeros((ids.size, 3), dtype=np.float32)
        times, share, since = block[:, 0], block[:, 1], block[:, 2]
        orders = user.stats.get("orders", 0.0)
        since[:] = orders
        found, pos = bought_rows(user, ids)
        if found.size:
            times[found] = user.item_stats["times_bought"][pos]
            since[found] = user.item_stats["orders_since_last_bought"][pos]
        np.divide(times, orders if orders > 0 else 1.0, out=share)
        return block


UNKNOWN = -1.0
"""What ``cadence`` and ``calendar`` give where there is nothing to measure (a product bought
once or never, a user with no dated order): every measured value is zero or more."""
CADENCE_NAMES = ("interval_orders", "due_ratio", "rate_since_first")


def bought_rows(user: endcap.UserFeatures, ids: np.ndarray, at_least: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(rows of ids, positions in the user's arrays)`` of the candidates the user bought at
    least ``at_least`` times (``user.items`` is sorted)."""
    if not (user.items.size and ids.size):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pos = np.searchsorted(user.items, ids)
    pos[pos == user.items.size] = 0
    rows = np.flatnonzero(user.items[pos] == ids)
    if at_least > 1:
        rows = rows[user.item_stats["times_bought"][pos[rows]] >= at_least]
    return rows, pos[rows]


def _measured(block: np.ndarray) -> np.ndarray:
    """``block`` with whatever could not be measured (NaN or infinite: a row written before an
    array existed, two purchases in one order) as :data:`UNKNOWN`."""
    np.nan_to_num(block, copy=False, nan=UNKNOWN, posinf=UNKNOWN, neginf=UNKNOWN)
    return block


class CadenceFeatures(endcap.FeatureProvider):
    def names(self) -> tuple[str, ...]:
        return tuple(f"cadence.{name}" for name in CADENCE_NAMES)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        block = np.full((ids.size, 3), UNKNOWN, dtype=np.float32)
        rows, pos = bought_rows(user, ids, at_least=2)
        if not rows.size:
            return block
        since_first = user.item_stats["orders_since_first_bought"][pos]
        known = since_first >= 0  # negative: a row written before Endcap counted it
        rows, pos, since_first = rows[known], pos[known], since_first[known]
        times = user.item_stats["times_bought"][pos]
        since_last = user.item_stats["orders_since_last_bought"][pos]
        bought = np.full((rows.size, 3), UNKNOWN, dtype=np.float32)
        interval = (since_first - since_last) / (times - 1)
        bought[:, 0] = interval
        spaced = interval > 0
        bought[spaced, 1] = (since_last[spaced] + 1) / interval[spaced]
        bought[:, 2] = times / (since_first + 1)
        block[rows] = _measured(bought)
        return block


CALENDAR_NAMES = ("days_since_last_order", "order_due", "days_since_bought", "item_due")
SECONDS_PER_DAY = 86_400.0


class CalendarFeatures(endcap.FeatureProvider):
    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self.data_until = math.nan
        """The training log's newest purchase, in days since 1970: the clock when a query has none."""

    def fit(self, data: endcap.TrainingData, directory: Path) -> Mapping[str, Any]:
        times = data.interactions["timestamp"]
        newest = times.max().timestamp() / SECONDS_PER_DAY if len(times) else None
        (directory / "clock.json").write_text(json.dumps({"data_until_day": newest}))
        return {"data_until_day": newest}

    def load(self, context: endcap.ModelContext) -> None:
        clock = context.directory / "clock.json"
        if not clock.exists():  # not trained with this model version: measure from the user's last order
            self.data_until = math.nan
            return
        newest = json.loads(clock.read_text())["data_until_day"]
        self.data_until = math.nan if newest is None else float(newest)

    def names(self) -> tuple[str, ...]:
        return tuple(f"calendar.{name}" for name in CALENDAR_NAMES)

    def today(self, query: endcap.Query, last_order: float) -> float:
        """The day the shopper is answered: the query's, else the newest day the data knows."""
        if math.isfinite(query.as_of):
            return query.as_of / SECONDS_PER_DAY
        return last_order if math.isnan(self.data_until) else max(self.data_until, last_order)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        block = np.full((ids.size, 4), UNKNOWN, dtype=np.float32)
        last_order = user.stats.get("last_order_day", math.nan)
        if math.isnan(last_order) or not ids.size:
            return block
        since_order = max(self.today(query, last_order) - last_order, 0.0)  # a caller's clock a little behind
        gap = user.stats.get("avg_days_between_orders", 0.0)
        block[:, 0] = since_order
        if gap > 0:
            block[:, 1] = since_order / gap
        rows, pos = bought_rows(user, ids)
        if rows.size:
            last_day = user.item_stats["last_bought_day"][pos]
            first_day = user.item_stats["first_bought_day"][pos]
            times = user.item_stats["times_bought"][pos]
            bought = np.full((rows.size, 2), UNKNOWN, dtype=np.float32)
            bought[:, 0] = np.maximum((since_order + last_order) - last_day, 0.0)
            interval = (last_day - first_day) / np.maximum(times - 1, 1)
            spaced = (times >= 2) & (interval > 0) & (first_day >= 0)  # bought twice on one day: no interval
            bought[last_day < 0] = UNKNOWN  # a row written before Endcap kept purchase days
            bought[spaced, 1] = bought[spaced, 0] / interval[spaced]
            block[rows, 2:] = _measured(bought)
        return block


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(UserStatsFeatures, type_name="user_stats")
    registry.add(ProductStatsFeatures, type_name="product_stats")
    registry.add(UserProductFeatures, type_name="user_product")
    registry.add(CadenceFeatures, type_name="cadence")
    registry.add(CalendarFeatures, type_name="calendar")
