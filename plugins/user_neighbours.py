"""Each user's most cosine-similar other users, for neighbour-based candidate sources.

Two searches over a users × items matrix:

* ``exact``: cosine similarity against every user, a block of users at a time (users² work);
* ``approximate``: users projected to ``dimensions`` by a randomized truncated SVD of their unit
  rows (a few sparse products), then an inverted-file index from faiss (k-means cells, the
  ``probes`` nearest searched): sub-quadratic, so a million users are searched in minutes.

``auto`` is exact below ``exact_below`` users (where the quadratic search is cheap and the
answer is the true one) and approximate above.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.sparse as sp
import structlog

log = structlog.get_logger("endcap.plugins.user_neighbours")

Search = Literal["auto", "exact", "approximate"]


def unit_rows(vectors: sp.csr_matrix) -> sp.csr_matrix:
    """``vectors`` with each non-empty row scaled to length 1 (float32)."""
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ vectors, dtype=np.float32)


def nearest_neighbours(
    vectors: sp.csr_matrix,
    k: int,
    rows: np.ndarray | None = None,
    search: Search = "auto",
    exact_below: int = 20_000,
    dimensions: int = 128,
    probes: int = 32,
) -> np.ndarray:
    """Indices of the ``k`` users most cosine-similar to each of ``rows`` (default: every
    user), the user itself left out: ``len(rows) × k``, -1 where there are fewer."""
    n = vectors.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    k = min(k, max(n - 1, 0))
    if k == 0 or rows.size == 0:
        return np.full((rows.size, k), -1, dtype=np.int32)
    unit = unit_rows(vectors)
    if search == "exact" or (search == "auto" and n < exact_below):
        return exact_neighbours(unit, k, rows)
    return approximate_neighbours(unit, k, rows, dimensions, probes)


def exact_neighbours(unit: sp.csr_matrix, k: int, rows: np.ndarray, block: int = 2048) -> np.ndarray:
    """Exact search: one block of ``rows`` against every user at a time."""
    result = np.full((rows.size, k), -1, dtype=np.int32)
    transposed = unit.T.tocsr()  # converted once: a CSR × CSC product would convert it per block
    for start in range(0, rows.size, block):
        chunk = rows[start : start + block]
        similarity = (unit[chunk] @ transposed).toarray()
        similarity[np.arange(chunk.size), chunk] = -np.inf
        result[start : start + chunk.size] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return result


def compact_users(unit: sp.csr_matrix, dimensions: int, power_iterations: int = 2, seed: int = 0) -> np.ndarray:
    """Users × ``dimensions`` unit vectors whose inner products approximate the cosine
    similarities of ``unit``'s rows: its randomized truncated SVD (Halko et al. 2011)."""
    n, items = unit.shape
    width = min(dimensions + 16, n, items)
    rng = np.random.default_rng(seed)
    sketch = unit @ rng.standard_normal((items, width)).astype(np.float32)
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(sketch)
        sketch = unit @ (unit.T @ basis)
    basis, _ = np.linalg.qr(sketch)
    small = np.asarray((unit.T @ basis).T)
    left, singular, _ = np.linalg.svd(small, full_matrices=False)
    users = np.ascontiguousarray((basis @ left[:, :dimensions]) * singular[:dimensions], dtype=np.float32)
    users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
    return users


def approximate_neighbours(unit: sp.csr_matrix, k: int, rows: np.ndarray, dimensions: int, probes: int) -> np.ndarray:
    """Inverted-file search (faiss ``IndexIVFFlat``, inner product) over :func:`compact_users`."""
    import faiss

    users = compact_users(unit, dimensions)
    n, width = users.shape
    # 2·√n cells of about √n/2 users: k-means on 48 users per cell (faiss wants at least 39)
    cells = max(1, min(int(2 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFFlat(quantizer, width, cells, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 48 * cells), replace=False)
    index.train(users[np.sort(sample)])
    index.add(users)
    index.nprobe = min(probes, cells)
    _, found = index.search(users[rows], k + 1)
    found[found == rows[:, None]] = -1  # the user itself
    result = np.full((rows.size, k), -1, dtype=np.int32)
    valid = found >= 0
    position = np.cumsum(valid, axis=1) - 1
    keep = valid & (position < k)
    result[np.nonzero(keep)[0], position[keep]] = found[keep]
    log.info("user_neighbours_approximate", users=n, dimensions=width, cells=cells, probes=index.nprobe)
    return result
