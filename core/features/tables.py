"""Feature tables computed from the canonical purchase log (pure pandas, no Feast).

Every table carries ``event_timestamp`` (the snapshot time: the statistics use only purchases
before it) and ``created_timestamp`` (when they were computed). The offline store keeps every
snapshot, for point-in-time joins; the online store is written from the newest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from endcap.data.baskets import add_basket_index
from endcap.data.integer_codes import order_by, run_starts, sorted_codes_of, utc_microseconds

PRODUCT_STATS_VIEW = "product_stats"
"""The Feast view of :data:`PRODUCT_STATS_COLUMNS` (keyed on the ``product`` entity)."""
USER_STATS_COLUMNS = ("orders", "avg_basket_size", "avg_days_between_orders", "distinct_items")
PRODUCT_STATS_COLUMNS = ("purchases", "distinct_buyers", "reorder_rate")
USER_CLOCK_COLUMNS = ("last_order_day",)
"""When the user last ordered, in days since 1970 (UTC, fractional): read with the statistics,
never a ranking feature itself (calendar features measure from it)."""
USER_PRODUCT_COLUMNS = (
    "times_bought",
    "orders_since_last_bought",
    "orders_since_first_bought",
    "last_bought_day",
    "first_bought_day",
)
DAY_MICROSECONDS = 86_400_000_000


def _stamp(frame: pd.DataFrame, as_of: pd.Timestamp, created: pd.Timestamp) -> pd.DataFrame:
    frame["event_timestamp"] = as_of
    frame["created_timestamp"] = created
    return frame.reset_index(drop=True)


def serving_cutoff(log: pd.DataFrame) -> pd.Timestamp:
    """The snapshot time that includes the whole log: just after its newest line."""
    newest: pd.Timestamp = log["timestamp"].max()
    return newest + pd.Timedelta(microseconds=1)


def day_cutoffs(times: pd.Series) -> list[pd.Timestamp]:
    """Midnights (UTC) of the days in ``times``: snapshots that see only earlier days."""
    return sorted(pd.DatetimeIndex(times).floor("D").unique())


def iter_snapshots(
    log: pd.DataFrame,
    cutoffs: list[pd.Timestamp] | None = None,
    created: pd.Timestamp | None = None,
    training_users: np.ndarray | None = None,
) -> Iterator[dict[str, pd.DataFrame]]:
    """``user_stats`` (statistics and purchase arrays) and ``product_stats`` of one snapshot at a time.

    A snapshot at ``t`` is computed from the lines strictly before ``t`` and stamped
    ``event_timestamp = t``, so a point-in-time join at ``t`` or later can see it and nothing
    earlier can. The default is the single serving snapshot (:func:`serving_cutoff`). With
    ``training_users`` (user ids), every snapshot but the last (the serving one) holds only
    their rows: the ones the ranker's examples read (see ``training.ranking_users``).
    """
    created = created if created is not None else pd.Timestamp.now(tz="UTC")
    if log.empty:
        return
    coded = _CodedLog.of(log)
    wanted = None if training_users is None else coded.user_ids.isin(training_users)
    every = cutoffs or [serving_cutoff(log)]
    for position, cutoff in enumerate(every):
        snapshot = coded.snapshot(cutoff, wanted if position < len(every) - 1 else None)
        if snapshot is not None:
            yield {name: _stamp(frame, cutoff, created) for name, frame in snapshot.items()}


def compute_feature_tables(
    log: pd.DataFrame, cutoffs: list[pd.Timestamp] | None = None, created: pd.Timestamp | None = None
) -> Mapping[str, pd.DataFrame]:
    """Every snapshot of :func:`iter_snapshots`, each table concatenated over them."""
    snapshots = list(iter_snapshots(log, cutoffs, created))
    return {name: pd.concat([s[name] for s in snapshots], ignore_index=True) for name in snapshots[0]}


@dataclass(frozen=True)
class _CodedLog:
    """The log as integer arrays, built once and cut at each snapshot: users and items are
    numbered in string order (so code order is the tables' sort order), and the lines are
    sorted by user, item and basket so each user × item pair is one run."""

    user_ids: pd.Index
    item_ids: pd.Index
    user: np.ndarray
    item: np.ndarray
    basket_index: np.ndarray
    time: np.ndarray
    basket: np.ndarray
    """Each line's basket, numbered across users (user order, then basket index)."""
    basket_user: np.ndarray

    @classmethod
    def of(cls, log: pd.DataFrame) -> _CodedLog:
        log = add_basket_index(log) if "basket_index" not in log.columns else log
        coded = sorted_codes_of({"user": log["user_id"], "item": log["item_id"]})
        (user, user_ids), (item, item_ids) = coded["user"], coded["item"]
        basket_index = log["basket_index"].to_numpy(np.int64)
        order = order_by(user, item, basket_index)
        user, item, basket_index = user[order], item[order], basket_index[order]
        baskets_per_user = np.zeros(len(user_ids), np.int64)
        np.maximum.at(baskets_per_user, user, basket_index + 1)
        first_basket = np.r_[0, np.cumsum(baskets_per_user)[:-1]]
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            user=user,
            item=item,
            basket_index=basket_index,
            time=utc_microseconds(log["timestamp"])[order],
            basket=first_basket[user] + basket_index,
            basket_user=np.repeat(np.arange(len(user_ids)), baskets_per_user),
        )

    def snapshot(self, cutoff: pd.Timestamp, users: np.ndarray | None = None) -> dict[str, pd.DataFrame] | None:
        """The tables from the lines before ``cutoff``; ``users`` (a mask over the user codes)
        keeps only those users' rows (the products' statistics still count every line)."""
        before = self.time < utc_microseconds([cutoff])[0]
        if not before.any():
            return None
        every = self._pairs(before)
        mine = every if users is None else self._pairs(before & users[self.user])
        return {"user_stats": self._user_stats(mine), "product_stats": self._product_stats(every)}

    def _pairs(self, lines: np.ndarray) -> _Pairs:
        user, item, basket_index, time, basket = (
            a[lines] for a in (self.user, self.item, self.basket_index, self.time, self.basket)
        )
        pair_start = run_starts(user, item)
        return _Pairs(user, item, basket_index, time, basket, pair_start, np.diff(np.r_[pair_start, len(user)]))

    def _user_stats(self, lines: _Pairs) -> pd.DataFrame:
        user, basket_index, basket, pair_start = lines.user, lines.basket_index, lines.basket, lines.pair_start
        n_users = len(self.user_ids)
        size = np.bincount(basket, minlength=len(self.basket_user))
        basket_time = np.full(len(size), np.iinfo(np.int64).max)
        np.minimum.at(basket_time, basket, lines.time)
        held = np.flatnonzero(size)
        owner = self.basket_user[held]
        orders = np.bincount(owner, minlength=n_users)
        basket_lines = np.bincount(owner, weights=size[held], minlength=n_users)
        first, last = np.full(n_users, np.iinfo(np.int64).max), np.zeros(n_users, np.int64)
        np.minimum.at(first, owner, basket_time[held])
        np.maximum.at(last, owner, basket_time[held])

        pair_user, pair_item = user[pair_start], lines.item[pair_start]
        last_basket = np.maximum.reduceat(basket_index, pair_start) if pair_start.size else pair_start
        first_basket = np.minimum.reduceat(basket_index, pair_start) if pair_start.size else pair_start
        line_day = basket_time[basket] / DAY_MICROSECONDS  # a line's day is its basket's
        distinct_items = np.bincount(pair_user, minlength=n_users)

        buyers = np.flatnonzero(orders)
        span_days = (last - first)[buyers] / 1e6 / 86400.0
        return pd.DataFrame(
            {
                "user_id": self.user_ids[buyers],
                "orders": orders[buyers].astype(np.int64),
                "avg_basket_size": (basket_lines[buyers] / orders[buyers]).astype(np.float32),
                "avg_days_between_orders": (span_days / np.maximum(orders[buyers] - 1, 1)).astype(np.float32),
                "distinct_items": distinct_items[buyers].astype(np.int64),
                "last_order_day": (last[buyers] / DAY_MICROSECONDS).astype(np.float64),
                **_per_user_lists(
                    distinct_items[buyers],
                    item_ids=_arrow(self.item_ids[pair_item].array),
                    times_bought=pa.array(lines.times_bought.astype(np.int64)),
                    orders_since_last_bought=pa.array((orders[pair_user] - 1 - last_basket).astype(np.int64)),
                    orders_since_first_bought=pa.array((orders[pair_user] - 1 - first_basket).astype(np.int64)),
                    last_bought_day=pa.array(
                        np.maximum.reduceat(line_day, pair_start) if pair_start.size else line_day
                    ),
                    first_bought_day=pa.array(
                        np.minimum.reduceat(line_day, pair_start) if pair_start.size else line_day
                    ),
                ),
            }
        )

    def _product_stats(self, lines: _Pairs) -> pd.DataFrame:
        pair_item = lines.item[lines.pair_start]
        n_items = len(self.item_ids)
        purchases = np.bincount(pair_item, weights=lines.times_bought, minlength=n_items).astype(np.int64)
        distinct_buyers = np.bincount(pair_item, minlength=n_items)
        sold = np.flatnonzero(distinct_buyers)
        return pd.DataFrame(
            {
                "item_id": self.item_ids[sold],
                "purchases": purchases[sold],
                "distinct_buyers": distinct_buyers[sold].astype(np.int64),
                "reorder_rate": ((purchases[sold] - distinct_buyers[sold]) / purchases[sold]).astype(np.float32),
            }
        )


@dataclass(frozen=True)
class _Pairs:
    """Some of the log's lines (sorted by user, item, basket), with the runs of each user × item."""

    user: np.ndarray
    item: np.ndarray
    basket_index: np.ndarray
    time: np.ndarray
    basket: np.ndarray
    pair_start: np.ndarray
    times_bought: np.ndarray


def _arrow(values: object) -> pa.Array:
    """``values`` as one Arrow array (pandas' Arrow-backed strings come as a chunked array)."""
    array = pa.array(values)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _per_user_lists(lengths: np.ndarray, **values: pa.Array) -> dict[str, pd.Series]:
    """One list per user cut from each array (pairs in user order) at the user boundaries,
    kept in Arrow."""
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    columns = {}
    for name, flat in values.items():
        lists = pa.ListArray.from_arrays(offsets, flat)
        columns[name] = pd.Series(lists, dtype=pd.ArrowDtype(lists.type))
    return columns


def label_baskets(log: pd.DataFrame, label_share: float = 0.0) -> pd.DataFrame:
    """The baskets a ranker learns to predict from everything before them (``user_id,
    basket_index, label_time``), for users with at least two baskets: each user's newest basket,
    and with ``label_share`` > 0 the newest baskets holding at least that share of the user's
    lines (always leaving the first basket as history). ``label_time`` is the user's earliest
    label basket's time, the same on each of their rows: features are read as of then."""
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    baskets = log.groupby(["user_id", "basket_index"], sort=False).agg(
        label_time=("timestamp", "min"), lines=("timestamp", "size")
    )
    baskets = baskets.reset_index().sort_values(["user_id", "basket_index"], ascending=[True, False])
    newest = baskets.groupby("user_id", sort=False)["basket_index"].transform("max")
    lines_after = baskets.groupby("user_id", sort=False)["lines"].cumsum() - baskets["lines"]
    total = baskets.groupby("user_id", sort=False)["lines"].transform("sum")
    wanted = (baskets["basket_index"] == newest) | (lines_after < label_share * total)
    labels = baskets[wanted & (baskets["basket_index"] >= 1)].copy()
    labels["label_time"] = labels.groupby("user_id", sort=False)["label_time"].transform("min")
    return labels[["user_id", "basket_index", "label_time"]].reset_index(drop=True)


def without_newest(log: pd.DataFrame, baskets: int) -> pd.DataFrame:
    """``log`` (with ``basket_index``) without each user's newest ``baskets`` baskets."""
    if baskets == 0:
        return log
    newest = log.groupby("user_id", sort=False)["basket_index"].transform("max")
    return log[log["basket_index"] <= newest - baskets]


def label_depths(
    log: pd.DataFrame, label_share: float = 0.0, depths: int = 1
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``(log without each user's newest k baskets, its label baskets)`` for ``k = 0 .. depths-1``:
    the ranker's query groups at each depth (see ``training.label_baskets``), one depth at a time,
    stopping at the first depth with no label basket. A log without repeat purchases
    (``label_share`` > 0) has one depth."""
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    for depth in range(depths if label_share == 0 else 1):
        truncated = without_newest(log, depth)
        labels = label_baskets(truncated, label_share)
        if labels.empty:
            return
        yield truncated, labels


def feature_cutoffs(
    log: pd.DataFrame, label_baskets_per_user: int = 1, training_users: np.ndarray | None = None
) -> list[pd.Timestamp]:
    """The snapshots ``endcap features`` writes: one per day on which a user's (of
    ``training_users``, default everyone) label baskets start, at every depth of
    :func:`label_depths` (for point-in-time training joins), and the serving snapshot."""
    from endcap.features.repeat_purchases import label_share

    days: set[pd.Timestamp] = set()
    for _, labels in label_depths(log, label_share(log), label_baskets_per_user):
        if training_users is not None:
            labels = labels[labels["user_id"].isin(training_users)]
        days.update(day_cutoffs(labels["label_time"]))
    return [*sorted(days), serving_cutoff(log)]


def sampled_users(user_ids: pd.Series, most: int) -> np.ndarray | None:
    """A seeded sample of ``most`` of the distinct ``user_ids`` (``training.ranking_users``);
    ``None`` (everyone) when there are no more than that. Ids numbered in string order (the
    training data's indices) give the same sample as the strings."""
    distinct = np.sort(user_ids.unique())
    if distinct.size <= most:
        return None
    return np.sort(np.random.default_rng(0).choice(distinct, most, replace=False))
