"""The ingested log as components train on it: dense indices and the users × items matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from endcap.data.baskets import add_basket_index
from endcap.data.canonical_log import OPTIONAL_COLUMNS
from endcap.data.integer_codes import utc_microseconds
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
    user_index = catalog_indices(log["user_id"], catalog.user_ids)
    item_index = catalog_indices(log["item_id"], catalog.item_ids)
    interactions = pd.DataFrame(
        {
            "user_index": user_index,
            "item_index": item_index,
            "basket_index": log["basket_index"].to_numpy(np.int32),
            "timestamp": log["timestamp"].array,  # tz-aware, not an object array of Timestamps
            "quantity": log["quantity"].to_numpy(np.int32),
            **_optional_columns(log),
        }
    )
    if not _by_user_and_time(interactions):  # the canonical log already is
        interactions = interactions.sort_values(["user_index", "timestamp"], kind="stable", ignore_index=True)
    return indexed_training_data(interactions, catalog)


def _by_user_and_time(interactions: pd.DataFrame) -> bool:
    """Whether the lines are sorted by user, then time."""
    users = np.diff(interactions["user_index"].to_numpy())
    times = np.diff(utc_microseconds(interactions["timestamp"]))
    return bool(((users > 0) | ((users == 0) & (times >= 0))).all())


def catalog_indices(values: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Each of ``values``' index in ``ids`` (-1 when absent): each distinct value looked up once,
    so a column of millions of Arrow strings never becomes millions of Python strings."""
    codes, distinct = pd.factorize(values)
    found = pd.Index(ids).get_indexer(pd.Index(np.asarray(distinct, dtype=object)))
    return np.append(found, -1).astype(np.int32)[codes]  # code -1 (a missing value): index -1


def indexed_training_data(interactions: pd.DataFrame, catalog: Catalog) -> TrainingData:
    """:class:`TrainingData` of ``interactions`` already in ``catalog``'s indices (``user_index,
    item_index, basket_index, timestamp, quantity`` and the optional columns the log has, sorted
    by user and time)."""
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
            **_optional_columns(frame),
        },
        copy=False,
    )


def _optional_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The optional log columns ``frame`` has (see :data:`OPTIONAL_COLUMNS`), as int32 arrays."""
    return {column: frame[column].to_numpy(np.int32) for column in OPTIONAL_COLUMNS if column in frame.columns}
