"""Ranking metrics for next-basket recommendation, computed for all users at once.

Conventions (those of the next-basket literature):

* ``recall@k`` = hits in the top k / size of the target basket;
* ``ndcg@k`` divides the DCG of the top k by the ideal DCG over the *whole* target basket;
* ``hit_rate@k`` = share of users with at least one hit;
* ``coverage@k`` = share of the catalogue that appears in anybody's top k;
* the ``_repeat`` / ``_explore`` variants count only hits on items the user had / had not
  bought before; each pair adds up to the plain metric.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp


def _lookup(matrix: sp.csr_matrix, recommended: np.ndarray) -> np.ndarray:
    """``matrix[u, recommended[u, j]] != 0`` as a boolean users × k array (-1 = no item)."""
    users, width = recommended.shape
    rows = np.repeat(np.arange(users), width)
    columns = recommended.ravel()
    valid = columns >= 0
    found = np.zeros(users * width, dtype=bool)
    if valid.any():
        found[valid] = np.asarray(matrix[rows[valid], columns[valid]]).ravel() != 0
    return found.reshape(users, width)


def ranking_metrics(
    recommended: np.ndarray,
    truth: sp.csr_matrix,
    history: sp.csr_matrix | None = None,
    ks: Iterable[int] = (10, 20),
) -> dict[str, float]:
    """Mean metrics over users with a non-empty target basket.

    :param recommended: users × K item indices, best first, ``-1`` where fewer were returned.
    :param truth: users × items, non-zero for the items of each user's target basket.
    :param history: users × items, non-zero for items bought before the target basket.
    :param ks: the cut-offs to report (each at most K).
    """
    truth = sp.csr_matrix(truth)
    sizes = truth.getnnz(axis=1)
    evaluated = sizes > 0
    hits = _lookup(truth, recommended)[evaluated]
    repeat = _lookup(sp.csr_matrix(history), recommended)[evaluated] if history is not None else None
    sizes = sizes[evaluated]
    width = recommended.shape[1]
    discounts = 1.0 / np.log2(np.arange(max(width, int(sizes.max(initial=1)))) + 2.0)
    ideal = np.cumsum(discounts)[np.maximum(sizes, 1) - 1]
    results: dict[str, float] = {"users": float(evaluated.sum())}
    for k in ks:
        top = hits[:, :k]
        gains = top * discounts[:k]
        results[f"recall@{k}"] = float(np.mean(top.sum(axis=1) / sizes)) if sizes.size else 0.0
        results[f"ndcg@{k}"] = float(np.mean(gains.sum(axis=1) / ideal)) if sizes.size else 0.0
        results[f"hit_rate@{k}"] = float(np.mean(top.any(axis=1))) if sizes.size else 0.0
        shown = recommended[:, :k]
        results[f"coverage@{k}"] = float(np.unique(shown[shown >= 0]).size / truth.shape[1])
        if repeat is not None:
            old = repeat[:, :k]
            results[f"recall_repeat@{k}"] = float(np.mean((top & old).sum(axis=1) / sizes)) if sizes.size else 0.0
            results[f"recall_explore@{k}"] = float(np.mean((top & ~old).sum(axis=1) / sizes)) if sizes.size else 0.0
            results[f"ndcg_repeat@{k}"] = float(np.mean((gains * old).sum(axis=1) / ideal)) if sizes.size else 0.0
            results[f"ndcg_explore@{k}"] = float(np.mean((gains * ~old).sum(axis=1) / ideal)) if sizes.size else 0.0
    return results


def recall_curve(recommended: np.ndarray, truth: sp.csr_matrix, max_k: int = 20) -> list[float]:
    """Recall@k for k = 1..max_k."""
    truth = sp.csr_matrix(truth)
    sizes = truth.getnnz(axis=1)
    evaluated = sizes > 0
    hits = _lookup(truth, recommended[:, :max_k])[evaluated]
    cumulative = np.cumsum(hits, axis=1) / sizes[evaluated][:, None]
    return [float(v) for v in cumulative.mean(axis=0)] if cumulative.size else [0.0] * max_k


def pad_rankings(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Stack ragged best-first index arrays into users × width, padding with -1."""
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : min(width, row.size)] = row[:width]
    return out


def per_user_metrics(
    recommended: np.ndarray, truth: sp.csr_matrix, ks: Iterable[int] = (10, 20)
) -> dict[str, np.ndarray]:
    """``recall@k`` and ``ndcg@k`` of every user with a non-empty target, in row order (the values
    :func:`ranking_metrics` averages): what a bootstrap over users resamples."""
    truth = sp.csr_matrix(truth)
    sizes = truth.getnnz(axis=1)
    evaluated = sizes > 0
    ks = tuple(ks)
    hits = _lookup(truth, recommended[:, : max(ks)])[evaluated]
    sizes = sizes[evaluated]
    discounts = 1.0 / np.log2(np.arange(max(max(ks), int(sizes.max(initial=1)))) + 2.0)
    ideal = np.cumsum(discounts)[np.maximum(sizes, 1) - 1]
    values: dict[str, np.ndarray] = {}
    for k in ks:
        top = hits[:, :k]
        values[f"recall@{k}"] = top.sum(axis=1) / np.maximum(sizes, 1)
        values[f"ndcg@{k}"] = (top * discounts[: top.shape[1]]).sum(axis=1) / ideal
    return values
