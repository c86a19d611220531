"""Each user's most cosine-similar other users, for neighbour-based candidate sources.

Two searches over a users × items matrix:

* ``exact``: cosine similarity against every user, a block of users at a time (users² work);
* ``approximate``: users projected to ``dimensions`` by a randomized truncated SVD of their unit
  rows (a few sparse products), then an inverted file: faiss's k-means cells, each user searched
  among the users of its ``probes`` nearest cells, each cell scored for all the users probing it
  in one matrix product: sub-quadratic, so a million users are searched in minutes.

``auto`` is exact below ``exact_below`` users (where the quadratic search is cheap and the
answer is the true one) and approximate above.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

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
    probes: int = 16,
) -> np.ndarray:
    """Indices of the ``k`` users most cosine-similar to each of ``rows`` (default: every
    user), the user itself left out: ``len(rows) × k``, -1 where there are fewer."""
    rows = np.arange(vectors.shape[0]) if rows is None else np.asarray(rows)
    return NeighbourSearch(vectors, k, search, exact_below, dimensions, probes).neighbours(rows)


def is_approximate(users: int, search: Search, exact_below: int) -> bool:
    """Whether ``search`` among ``users`` users is the approximate one."""
    return search == "approximate" or (search == "auto" and users >= exact_below)


class NeighbourSearch:
    """:func:`nearest_neighbours` prepared once over every user (unit rows; for the approximate
    search the compact vectors and the faiss index), then asked for any rows, a block at a time:
    memory follows the block, not the users asked."""

    def __init__(
        self,
        vectors: sp.csr_matrix,
        k: int,
        search: Search = "auto",
        exact_below: int = 20_000,
        dimensions: int = 128,
        probes: int = 16,
        threads: int = 2,
    ) -> None:
        n = vectors.shape[0]
        self.k = min(k, max(n - 1, 0))
        self._exact: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
        self._index: CellIndex | None = None
        if self.k == 0:
            return
        unit = unit_rows(vectors)
        if not is_approximate(n, search, exact_below):
            self._exact = (unit, unit.T.tocsr())  # transposed once: a CSR × CSC product converts per block
        else:
            self._index = inverted_file(compact_users(unit, dimensions, threads=threads), probes)

    def neighbours(self, rows: np.ndarray, block: int | None = None) -> np.ndarray:
        """``len(rows) × k`` neighbour indices of ``rows`` (-1 where there are fewer), ``block``
        rows at a time: by default 2,048 for the exact search (its similarities are a dense
        block × users) and 8,192 for the approximate one (more rows share each cell's product)."""
        block = block or (2048 if self._exact is not None else 8192)
        result = np.full((rows.size, self.k), -1, dtype=np.int32)
        for start in range(0, rows.size if self.k else 0, block):
            chunk = rows[start : start + block]
            if self._exact is not None:
                result[start : start + chunk.size] = exact_neighbours(*self._exact, self.k, chunk)
            elif self._index is not None:
                result[start : start + chunk.size] = searched_neighbours(self._index, self.k, chunk)
        return result


def exact_neighbours(unit: sp.csr_matrix, transposed: sp.csr_matrix, k: int, rows: np.ndarray) -> np.ndarray:
    """Exact search of ``rows`` against every user (``transposed`` is ``unit.T`` as CSR)."""
    similarity = (unit[rows] @ transposed).toarray()
    similarity[np.arange(rows.size), rows] = -np.inf
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k].astype(np.int32)


def compact_users(
    unit: sp.csr_matrix, dimensions: int, power_iterations: int = 2, seed: int = 0, threads: int = 2
) -> np.ndarray:
    """Users × ``dimensions`` unit vectors whose inner products approximate the cosine
    similarities of ``unit``'s rows: its randomized truncated SVD (Halko et al. 2011), in
    float32, each sparse product split by rows over ``threads`` threads."""
    n, items = unit.shape
    width = min(dimensions + 16, n, items)
    rng = np.random.default_rng(seed)
    transposed = unit.T.tocsr()
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def times(matrix: sp.csr_matrix, dense: np.ndarray) -> np.ndarray:
            parts = [rows for rows in np.array_split(np.arange(matrix.shape[0]), threads) if rows.size]
            return np.vstack(list(pool.map(lambda rows: matrix[rows[0] : rows[-1] + 1] @ dense, parts)))

        sketch = times(unit, rng.standard_normal((items, width)).astype(np.float32))
        for _ in range(power_iterations):
            basis = orthonormal(sketch)
            sketch = times(unit, times(transposed, basis))
        basis = orthonormal(sketch)
        small = times(transposed, basis).T
    left, singular, _ = np.linalg.svd(small, full_matrices=False)
    users = np.ascontiguousarray((basis @ left[:, :dimensions]) * singular[:dimensions], dtype=np.float32)
    users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
    return users


def orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``columns``' span (economic QR in their own precision)."""
    import scipy.linalg

    basis: np.ndarray = scipy.linalg.qr(columns, mode="economic", overwrite_a=True, check_finite=False)[0]
    return basis


@dataclass(frozen=True)
class CellIndex:
    """Users grouped by their nearest k-means cell (an inverted file): the cells' centroids in a
    faiss index, and each cell's users next to each other for one matrix product per cell."""

    quantizer: Any
    """faiss ``IndexFlatIP`` over the cells' centroids."""
    users: np.ndarray
    """Every user's unit vector (float32), in user order."""
    members: np.ndarray
    """User indices ordered by cell: cell ``c`` holds ``members[starts[c]:starts[c + 1]]``."""
    grouped: np.ndarray
    """``users[members]`` in float64: a cell's scores are summed in float64 and rounded to
    float32, so they do not depend on how many users ask at once (an AVX-512 BLAS kernel's
    float32 sums differ in the last bit with the block's shape, which reorders ties)."""
    starts: np.ndarray
    probes: int
    """Cells searched per user: the nearest ones."""


def inverted_file(users: np.ndarray, probes: int) -> CellIndex:
    """:class:`CellIndex` of ``users`` with cells from faiss's k-means (as ``IndexIVFFlat`` trains them)."""
    import faiss

    n, width = users.shape
    # 2·√n cells of about √n/2 users: k-means on 48 users per cell (faiss wants at least 39)
    cells = max(1, min(int(2 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(width)
    trainer = faiss.IndexIVFFlat(quantizer, width, cells, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 48 * cells), replace=False)
    trainer.train(users[np.sort(sample)])
    _, nearest = quantizer.search(users, 1)
    members = np.argsort(nearest[:, 0], kind="stable")
    starts = np.searchsorted(nearest[members, 0], np.arange(cells + 1))
    log.info("user_neighbours_approximate", users=n, dimensions=width, cells=cells, probes=min(probes, cells))
    return CellIndex(quantizer, users, members, users[members].astype(np.float64), starts, min(probes, cells))


def searched_neighbours(index: CellIndex, k: int, rows: np.ndarray) -> np.ndarray:
    """``rows``' ``k`` nearest among the users of their ``probes`` nearest cells (what faiss's
    ``IndexIVFFlat.search`` finds), the user itself left out, ties by user index. Each cell's
    users are scored for all the rows probing it in one matrix product, and each row keeps its
    best as the cells come: faiss scans a cell one vector at a time per row, 3x slower."""
    wanted = k + 1
    queries = index.users[rows]
    _, probed = index.quantizer.search(queries, index.probes)
    queries = queries.astype(np.float64)
    pair_row = np.repeat(np.arange(rows.size), probed.shape[1])
    pair_cell = probed.ravel()
    pair_row, pair_cell = pair_row[pair_cell >= 0], pair_cell[pair_cell >= 0]
    by_cell = np.argsort(pair_cell, kind="stable")
    pair_row, pair_cell = pair_row[by_cell], pair_cell[by_cell]
    bounds = np.flatnonzero(np.r_[True, pair_cell[1:] != pair_cell[:-1], True]) if pair_cell.size else np.zeros(0)
    best = np.full((rows.size, wanted), -np.inf, dtype=np.float32)
    found = np.full((rows.size, wanted), -1, dtype=np.int64)
    for first, end in itertools.pairwise(bounds.tolist()):
        cell, asking = pair_cell[first], pair_row[first:end]
        low, high = index.starts[cell], index.starts[cell + 1]
        if low == high:
            continue
        cell_scores = (queries[asking] @ index.grouped[low:high].T).astype(np.float32)
        scores = np.concatenate([best[asking], cell_scores], axis=1)
        ids = np.concatenate([found[asking], np.broadcast_to(index.members[low:high], (asking.size, high - low))], 1)
        top = np.argpartition(-scores, wanted - 1, axis=1)[:, :wanted]
        best[asking], found[asking] = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    found = np.take_along_axis(found, np.lexsort((found, -best)), 1)  # best first, ties by user index
    found[found == rows[:, None]] = -1  # the user itself
    result = np.full((rows.size, k), -1, dtype=np.int32)
    valid = found >= 0
    position = np.cumsum(valid, axis=1) - 1
    keep = valid & (position < k)
    result[np.nonzero(keep)[0], position[keep]] = found[keep]
    return result
