"""Feature tables computed from the canonical purchase log (pure pandas, no Feast).

Every table carries ``event_timestamp`` (the snapshot time: the statistics use only purchases
before it) and ``created_timestamp`` (when they were computed). The offline store keeps every
snapshot, for point-in-time joins; the online store is materialized from the newest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

USER_STATS_COLUMNS = ("orders", "avg_basket_size", "avg_days_between_orders", "distinct_items")
PRODUCT_STATS_COLUMNS = ("purchases", "distinct_buyers", "reorder_rate")
USER_PRODUCT_COLUMNS = ("times_bought", "orders_since_last_bought")


def add_basket_index(log: pd.DataFrame) -> pd.DataFrame:
    """Add ``basket_index``: 0 for each user's first basket, counting up in time order
    (a basket's time is its earliest line)."""
    baskets = (
        log.groupby(["user_id", "basket_id"], sort=False)["timestamp"]
        .min()
        .reset_index()
        .sort_values(["user_id", "timestamp", "basket_id"], kind="stable")
    )
    baskets["basket_index"] = baskets.groupby("user_id", sort=False).cumcount().astype(np.int32)
    log = log.drop(columns=["basket_index"], errors="ignore")
    return log.merge(baskets[["user_id", "basket_id", "basket_index"]], on=["user_id", "basket_id"], how="left")


def _stamp(frame: pd.DataFrame, as_of: pd.Timestamp, created: pd.Timestamp) -> pd.DataFrame:
    frame["event_timestamp"] = as_of
    frame["created_timestamp"] = created
    return frame.reset_index(drop=True)


def serving_cutoff(log: pd.DataFrame) -> pd.Timestamp:
    """The snapshot time that includes the whole log: just after its newest line."""
    return log["timestamp"].max() + pd.Timedelta(microseconds=1)


def day_cutoffs(times: pd.Series) -> list[pd.Timestamp]:
    """Midnights (UTC) of the days in ``times``: snapshots that see only earlier days."""
    return sorted(pd.DatetimeIndex(times).floor("D").unique())


def iter_snapshots(
    log: pd.DataFrame, cutoffs: list[pd.Timestamp] | None = None, created: pd.Timestamp | None = None
) -> Iterator[dict[str, pd.DataFrame]]:
    """``user_stats`` (statistics and purchase arrays) and ``product_stats`` of one snapshot at a time.

    A snapshot at ``t`` is computed from the lines strictly before ``t`` and stamped
    ``event_timestamp = t``, so a point-in-time join at ``t`` or later can see it and nothing
    earlier can. The default is the single serving snapshot (:func:`serving_cutoff`).
    """
    created = created if created is not None else pd.Timestamp.now(tz="UTC")
    # A basket's index counts the user's earlier baskets, which a cutoff never removes: number
    # them once for the whole log rather than once per snapshot.
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    for cutoff in cutoffs or [serving_cutoff(log)]:
        snapshot = _snapshot(log[log["timestamp"] < cutoff], cutoff, created)
        if snapshot is not None:
            yield snapshot


def compute_feature_tables(
    log: pd.DataFrame, cutoffs: list[pd.Timestamp] | None = None, created: pd.Timestamp | None = None
) -> Mapping[str, pd.DataFrame]:
    """Every snapshot of :func:`iter_snapshots`, each table concatenated over them."""
    snapshots = list(iter_snapshots(log, cutoffs, created))
    return {name: pd.concat([s[name] for s in snapshots], ignore_index=True) for name in snapshots[0]}


def _snapshot(log: pd.DataFrame, as_of: pd.Timestamp, created: pd.Timestamp) -> dict[str, pd.DataFrame] | None:
    if log.empty:
        return None
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    baskets = log.groupby(["user_id", "basket_index"], sort=False).agg(
        size=("item_id", "size"), timestamp=("timestamp", "min")
    )
    per_user = baskets.groupby(level="user_id")
    span_days = (per_user["timestamp"].max() - per_user["timestamp"].min()).dt.total_seconds() / 86400.0
    orders = per_user.size()
    user_stats = (
        pd.DataFrame(
            {
                "orders": orders.astype(np.int64),
                "avg_basket_size": per_user["size"].mean().astype(np.float32),
                "avg_days_between_orders": (span_days / (orders - 1).clip(lower=1)).astype(np.float32),
                "distinct_items": log.groupby("user_id")["item_id"].nunique().astype(np.int64),
            }
        )
        .rename_axis("user_id")
        .reset_index()
    )

    pairs = (
        log.groupby(["user_id", "item_id"], sort=True)
        .agg(times_bought=("basket_index", "size"), last_basket=("basket_index", "max"))
        .reset_index()
    )
    pairs["orders_since_last_bought"] = (
        pairs["user_id"].map(orders).to_numpy() - 1 - pairs["last_basket"].to_numpy()
    ).astype(np.int64)

    per_item = pairs.groupby("item_id", sort=True)
    purchases = per_item["times_bought"].sum()
    product_stats = (
        pd.DataFrame(
            {
                "purchases": purchases.astype(np.int64),
                "distinct_buyers": per_item.size().astype(np.int64),
                "reorder_rate": ((purchases - per_item.size()) / purchases).astype(np.float32),
            }
        )
        .rename_axis("item_id")
        .reset_index()
    )

    # pairs are sorted by user: one list per user cut from each column at the user boundaries
    users, counts = np.unique(pairs["user_id"].to_numpy(), return_counts=True)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), type=pa.int32())
    user_product_stats = pd.DataFrame(
        {
            "user_id": users,
            **{
                name: pa.ListArray.from_arrays(offsets, pa.array(pairs[column].to_numpy(dtype))).to_pandas()
                for name, column, dtype in (
                    ("item_ids", "item_id", object),
                    ("times_bought", "times_bought", np.int64),
                    ("orders_since_last_bought", "orders_since_last_bought", np.int64),
                )
            },
        }
    )

    user_stats = user_stats.merge(user_product_stats, on="user_id", how="left")
    return {
        "user_stats": _stamp(user_stats, as_of, created),
        "product_stats": _stamp(product_stats, as_of, created),
    }


def label_baskets(log: pd.DataFrame) -> pd.DataFrame:
    """Each user's newest basket (``user_id, basket_id, label_time``), for users with at least two:
    what a ranker learns to predict from everything before it."""
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    times = log.groupby(["user_id", "basket_index"], sort=False)["timestamp"].min().reset_index()
    last = times.groupby("user_id", sort=False)["basket_index"].transform("max")
    labels = times[(times["basket_index"] == last) & (last >= 1)]
    return labels.rename(columns={"timestamp": "label_time"}).reset_index(drop=True)


def feature_cutoffs(log: pd.DataFrame) -> list[pd.Timestamp]:
    """The snapshots ``endcap features`` writes: one per day on which a label basket falls (for
    point-in-time training joins) and the serving snapshot."""
    return [*day_cutoffs(label_baskets(log)["label_time"]), serving_cutoff(log)]
