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

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        table = np.array(
            [[user.stats.get(column, 0.0) for column in USER_STATS_COLUMNS] for user in block.users], dtype=np.float32
        ).reshape(len(block), len(USER_STATS_COLUMNS))
        return table[np.repeat(np.arange(len(block)), np.diff(offsets))]


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

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return self.compute(block.queries[0], block.users[0], ids, products) if len(block) else products[ids]


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

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        values = np.zeros((ids.size, 3), dtype=np.float32)
        times, share, since = values[:, 0], values[:, 1], values[:, 2]
        rows = rows_of(offsets)
        orders = user_stat(block, "orders", 0.0)
        since[:] = orders[rows]
        found, pos = block.purchases.find(rows, ids)
        times[found] = block.purchases.stat("times_bought")[pos]
        since[found] = block.purchases.stat("orders_since_last_bought")[pos]
        np.divide(times, np.where(orders > 0, orders, 1.0).astype(np.float32)[rows], out=share)
        return values


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


def rows_of(offsets: np.ndarray) -> np.ndarray:
    """The block row of every candidate, from the rows' ``offsets``."""
    return np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(offsets))


def user_stat(block: endcap.UserBlock, name: str, missing: float) -> np.ndarray:
    """Statistic ``name`` of every row's user (float64, as ``UserFeatures.stats`` holds it)."""
    return np.fromiter((user.stats.get(name, missing) for user in block.users), dtype=np.float64, count=len(block))


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
        rows, pos = bought_rows(user, ids, at_least=2)
        return _cadence(ids.size, rows, pos, user.item_stats.__getitem__)

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        found, pos = block.purchases.find(rows_of(offsets), ids, at_least=2)
        return _cadence(ids.size, found, pos, block.purchases.stat)


def _cadence(size: int, rows: np.ndarray, pos: np.ndarray, stat: Any) -> np.ndarray:
    """``cadence``'s block for ``size`` candidates, of which ``rows`` were bought twice or more
    (``pos``: their positions in the arrays ``stat(name)`` gives)."""
    block = np.full((size, 3), UNKNOWN, dtype=np.float32)
    if rows.size:
        since_first = stat("orders_since_first_bought")[pos]
        known = since_first >= 0  # negative: a row written before Endcap counted it
        rows, pos, since_first = rows[known], pos[known], since_first[known]
        times = stat("times_bought")[pos]
        since_last = stat("orders_since_last_bought")[pos]
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

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        """:meth:`compute`'s arithmetic on arrays of every row's clock and statistics."""
        values = np.full((ids.size, 4), UNKNOWN, dtype=np.float32)
        rows = rows_of(offsets)
        last_order = user_stat(block, "last_order_day", math.nan)
        as_of = np.fromiter((query.as_of for query in block.queries), dtype=np.float64, count=len(block))
        newest = (
            last_order
            if math.isnan(self.data_until)
            else np.where(last_order > self.data_until, last_order, self.data_until)
        )
        elapsed = np.where(np.isfinite(as_of), as_of / SECONDS_PER_DAY, newest) - last_order
        since_order = np.where(elapsed < 0.0, 0.0, elapsed)
        gap = user_stat(block, "avg_days_between_orders", 0.0)
        dated = ~np.isnan(last_order)
        live = np.flatnonzero(dated[rows])
        values[live, 0] = since_order[rows[live]]
        due = np.flatnonzero((dated & (gap > 0))[rows])
        values[due, 1] = (since_order / np.where(gap > 0, gap, 1.0))[rows[due]]
        found, pos = block.purchases.find(rows, ids)
        alive = dated[rows[found]]
        found, pos = found[alive], pos[alive]
        if found.size:
            stat = block.purchases.stat
            last_day, first_day, times = (
                stat("last_bought_day")[pos],
                stat("first_bought_day")[pos],
                stat("times_bought")[pos],
            )
            bought = np.full((found.size, 2), UNKNOWN, dtype=np.float32)
            bought[:, 0] = np.maximum((since_order + last_order).astype(np.float32)[rows[found]] - last_day, 0.0)
            interval = (last_day - first_day) / np.maximum(times - 1, 1)
            spaced = (times >= 2) & (interval > 0) & (first_day >= 0)
            bought[last_day < 0] = UNKNOWN
            bought[spaced, 1] = bought[spaced, 0] / interval[spaced]
            values[found, 2:] = _measured(bought)
        return values


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(UserStatsFeatures, type_name="user_stats")
    registry.add(ProductStatsFeatures, type_name="product_stats")
    registry.add(UserProductFeatures, type_name="user_product")
    registry.add(CadenceFeatures, type_name="cadence")
    registry.add(CalendarFeatures, type_name="calendar")
