"""The purchase log as integers: the shared steps of ingest and feature computation at scale.

Ids are numbered in string order, so sorting codes sorts the strings; times become microseconds
since the epoch; runs of equal keys in sorted arrays mark the groups ``reduceat`` works on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def sorted_codes(values: Any) -> tuple[np.ndarray, pd.Index]:
    """Codes numbering ``values`` in string order, and the distinct strings in that order."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes, pd.Index(uniques)


def utc_microseconds(times: Any) -> np.ndarray:
    """Microseconds since the epoch of tz-aware times, or of naive times taken as UTC."""
    index = pd.DatetimeIndex(times)
    index = index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index
    return index.to_numpy().astype("datetime64[us]").view(np.int64)


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Positions where any of the (sorted, equally long) ``keys`` changes: each run's first row."""
    if not keys[0].size:
        return np.empty(0, dtype=np.int64)
    changed = np.zeros(keys[0].size - 1, dtype=bool)
    for key in keys:
        changed |= key[1:] != key[:-1]
    return np.flatnonzero(np.r_[True, changed])
