"""Reference systems the evaluation and the promotion gate score beside the pipeline.

* **G-TopFreq**: the most purchased items overall, the same list for everybody.
* **P-TopFreq**: the user's own most purchased items, then popular ones.
* **ALS**: a plain implicit ``AlternatingLeastSquares`` (see :data:`ALS_BASELINE`), trained on
  the same training rows, answering through implicit's own batch ``recommend``.

With ``exclude_purchased`` (the model manifest's choice for a no-repeat domain), none of them
proposes an item the user already has in the training rows, as the pipeline does not either.
All return one best-first array of item indices per user, at most ``k`` long.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from endcap.types import TrainingData

ALS_BASELINE = {
    "factors": 64,
    "iterations": 15,
    "regularization": 0.01,
    "random_state": 0,
    "bm25_k1": 100.0,
    "bm25_b": 0.8,
}
"""The ALS baseline's settings: implicit's defaults for a first try, fixed seed, and BM25
confidence weighting of the users × items counts (implicit's recommended weighting for
implicit feedback; it damps very popular items and very long histories)."""


def _user_rows(data: TrainingData, users: list[str]) -> np.ndarray:
    rows = pd.Index(data.catalog.user_ids).get_indexer(pd.Index(users))
    if (rows < 0).any():
        missing = [u for u, r in zip(users, rows, strict=True) if r < 0][:5]
        raise ValueError(f"users not in the training rows: {missing}; every evaluated user must have training lines")
    return np.asarray(rows, dtype=np.int64)


def frequency_baselines(
    data: TrainingData, users: list[str], k: int = 20, exclude_purchased: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """G-TopFreq and P-TopFreq for ``users``.

    :param exclude_purchased: leave out each user's training items (P-TopFreq is then the
        popular items the user does not have, like G-TopFreq).
    """
    counts = data.user_items
    popular = np.argsort(-np.asarray(counts.sum(axis=0)).ravel(), kind="stable")
    g_top, p_top = [], []
    for row_index in _user_rows(data, users):
        row = counts[row_index]
        if exclude_purchased:
            allowed = popular[~np.isin(popular, row.indices)][:k]
            g_top.append(allowed)
            p_top.append(allowed)
            continue
        own = row.indices[np.argsort(-row.data, kind="stable")][:k]
        fill = popular[: 2 * k][~np.isin(popular[: 2 * k], own)][: k - own.size]
        g_top.append(popular[:k])
        p_top.append(np.concatenate([own, fill]))
    return g_top, p_top


def als_baseline(
    data: TrainingData, users: list[str], k: int = 20, exclude_purchased: bool = False
) -> list[np.ndarray]:
    """Plain implicit ALS (:data:`ALS_BASELINE`) fitted on ``data`` and asked, in one batch call,
    for each user's top ``k`` (``filter_already_liked_items=exclude_purchased``)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    settings = ALS_BASELINE
    weighted = sp.csr_matrix(
        bm25_weight(data.user_items, K1=settings["bm25_k1"], B=settings["bm25_b"]).tocsr().astype(np.float32)
    )
    model = AlternatingLeastSquares(
        factors=int(settings["factors"]),
        iterations=int(settings["iterations"]),
        regularization=float(settings["regularization"]),
        random_state=int(settings["random_state"]),
    )
    model.fit(weighted, show_progress=False)
    rows = _user_rows(data, users)
    if rows.size == 0:
        return []
    n = min(k, data.catalog.n_items)
    ids, scores = model.recommend(rows, weighted[rows], N=n, filter_already_liked_items=exclude_purchased)
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
    # implicit pads a short row (everything filtered) with id -1 / score -inf
    return [row_ids[(row_ids >= 0) & np.isfinite(row_scores)] for row_ids, row_scores in zip(ids, scores, strict=True)]
