"""The ingested log as components train on it: dense indices and the users × items matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from endcap.data.baskets import add_basket_index
from endcap.types import Catalog, TrainingData


def build_training_data(log: pd.DataFrame, catalog: Catalog | None = None) -> TrainingData:
    """Map string ids to dense indices and build the users × items count matrix.

    ``catalog`` keeps another log's id ↔ index mapping (every id in ``log`` must be in it)."""
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    if catalog is None:
        catalog = Catalog(
            user_ids=np.sort(log["user_id"].unique().astype(str)),
            item_ids=np.sort(log["item_id"].unique().astype(str)),
        )
    user_index = pd.Index(catalog.user_ids).get_indexer(pd.Index(log["user_id"])).astype(np.int32)
    item_index = pd.Index(catalog.item_ids).get_indexer(pd.Index(log["item_id"])).astype(np.int32)
    interactions = pd.DataFrame(
        {
            "user_index": user_index,
            "item_index": item_index,
            "basket_index": log["basket_index"].to_numpy(np.int32),
            "timestamp": log["timestamp"].array,  # tz-aware, not an object array of Timestamps
            "quantity": log["quantity"].to_numpy(np.int32),
        }
    ).sort_values(["user_index", "timestamp"], kind="stable", ignore_index=True)
    return indexed_training_data(interactions, catalog)


def indexed_training_data(interactions: pd.DataFrame, catalog: Catalog) -> TrainingData:
    """:class:`TrainingData` of ``interactions`` already in ``catalog``'s indices (``user_index,
    item_index, basket_index, timestamp, quantity``, sorted by user and time)."""
    user_items = sp.csr_matrix(
        (np.ones(len(interactions), dtype=np.float32), (interactions["user_index"], interactions["item_index"])),
        shape=(catalog.n_users, catalog.n_items),
    )
    user_items.sum_duplicates()
    return TrainingData(catalog=catalog, interactions=interactions, user_items=user_items)


def coded_log(data: TrainingData) -> pd.DataFrame:
    """``data``'s lines as a canonical log whose ``user_id`` and ``item_id`` are the catalogue's
    indices (numbered in id order, so they sort as the ids do)."""
    frame = data.interactions
    return pd.DataFrame(
        {
            "user_id": frame["user_index"],
            "item_id": frame["item_index"],
            "basket_index": frame["basket_index"],
            "timestamp": frame["timestamp"],
            "quantity": frame["quantity"],
        },
        copy=False,
    )
