"""Baskets of the canonical purchase log, numbered per user in time order."""

from __future__ import annotations

import numpy as np
import pandas as pd
from endcap.data.integer_codes import run_starts, sorted_codes, utc_microseconds


def add_basket_index(log: pd.DataFrame) -> pd.DataFrame:
    """Add ``basket_index``: 0 for each user's first basket, counting up in time order
    (a basket's time is its earliest line; ties go by basket id)."""
    log = log.drop(columns=["basket_index"], errors="ignore")
    user, _ = sorted_codes(log["user_id"])
    basket_code, basket_ids = sorted_codes(log["basket_id"])
    width = max(len(basket_ids), 1)
    baskets, row_basket = np.unique(user.astype(np.int64) * width + basket_code, return_inverse=True)
    first_time = np.full(len(baskets), np.iinfo(np.int64).max)
    np.minimum.at(first_time, row_basket, utc_microseconds(log["timestamp"]))
    basket_user, basket_id = np.divmod(baskets, width)
    order = np.lexsort((basket_id, first_time, basket_user))
    user_start = run_starts(basket_user[order])
    index = np.empty(len(baskets), np.int32)
    index[order] = np.arange(len(order)) - np.repeat(user_start, np.diff(np.r_[user_start, len(order)]))
    return log.assign(basket_index=index[row_basket])
