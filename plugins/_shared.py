"""Helpers shared by the built-in components: top-n selection and the user's purchase row."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from endcap.types import Candidates, IndexArray, Query, ScoreArray, UserFeatures


def top_n(ids: IndexArray, scores: ScoreArray, n: int) -> Candidates:
    """The ``n`` highest-scoring entries, best first (ties broken by position)."""
    if n <= 0 or ids.size == 0:
        return Candidates.empty()
    if ids.size > n:
        keep = np.argpartition(-scores, n - 1)[:n]
        ids, scores = ids[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return Candidates(ids[order].astype(np.int32, copy=False), scores[order].astype(np.float32, copy=False))


def user_row(query: Query, user: UserFeatures, user_items: sp.csr_matrix) -> sp.csr_matrix | None:
    """The user's purchase counts as a 1 × items row: from training when the model knows the
    user, else from the feature store's purchase arrays; ``None`` when there is no history."""
    if query.user_index >= 0:
        return user_items[query.user_index]
    if user.items.size == 0:
        return None
    counts = user.item_stats.get("times_bought", np.ones(user.items.size, dtype=np.float32))
    columns = user.items
    return sp.csr_matrix(
        (counts.astype(np.float32), (np.zeros(columns.size, dtype=np.int32), columns)),
        shape=(1, user_items.shape[1]),
    )


def similar_from(model: Any, item_index: int, n: int) -> Candidates:
    """``n`` neighbours of ``item_index`` from an implicit model, the item itself left out."""
    ids, scores = model.similar_items(item_index, N=n + 1)
    keep = ids != item_index
    return top_n(np.asarray(ids[keep], dtype=np.int32), np.asarray(scores[keep], dtype=np.float32), n)
