"""Exact top-k by inner product, most of the catalogue never scored.

A user's score for an item is at most the product of their norms (Cauchy–Schwarz). With the
items ordered by norm, largest first, scoring a prefix of them is enough once the user's k-th
best score in the prefix is above the user's norm times the norm of the first item left out:
no item past the prefix can reach it. Factor models give popular items large norms, so a few
thousand of a hundred thousand items usually settle a user's top 100; a user the prefix does
not settle is scored on a prefix twice as long, up to the whole catalogue.

The answer is exactly the full scoring's top-k (ties by item index), whatever the data; only
the time depends on how skewed the norms are. The products that pick the candidates are
float32 BLAS products, whose last bit depends on where the kernel's tiling puts an item (on an
AVX-512 kernel, equal items do not score equal); so the candidates within that rounding of each
user's k-th best are scored again row by row in float64 and rounded to float32, and those scores
rank them: equal items score equal on any CPU, and a block of users gets each user's own answer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from endcap.types import CandidateBlock, Candidates, run_offsets

SAFETY = 1e-4
"""Relative margin on the bound: a float32 score may be off by a few parts in a million."""

ROUNDING = 1e-5
"""A float32 product's error relative to the product of the norms (at most a few parts in a
million for up to a few hundred factors): candidates this close below the k-th best are scored
again exactly."""


class NormOrderedItems:
    """Item factors ordered by norm, largest first, for :meth:`top`."""

    def __init__(self, item_factors: npt.NDArray[np.float32], first_prefix: int = 8192) -> None:
        norms = np.linalg.norm(item_factors.astype(np.float64), axis=1)
        self.order = np.argsort(-norms, kind="stable").astype(np.int32)
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(self.order.size, dtype=np.int32)
        self.factors = np.ascontiguousarray(item_factors[self.order])
        # the bound for a prefix of p items is the norm of item p (zero past the last)
        self.next_norm = np.append(norms[self.order], 0.0)
        self.first_prefix = first_prefix

    def top(self, users: npt.NDArray[np.float32], k: int) -> CandidateBlock:
        """Each row of ``users``' ``k`` best items by inner product (fewer only when the catalogue
        is smaller), best first, equal scores by item index."""
        n_items = self.factors.shape[0]
        k = min(k, n_items)
        if k <= 0:
            return CandidateBlock.join([Candidates.empty()] * users.shape[0])
        user_norms = np.linalg.norm(users.astype(np.float64), axis=1)
        ids = np.empty((users.shape[0], k), dtype=np.int32)
        scores = np.empty((users.shape[0], k), dtype=np.float32)
        pending = np.arange(users.shape[0])
        start, stop = 0, min(max(self.first_prefix, 2 * k), n_items)
        # the pending users' best so far (none before the first prefix)
        best_ids, best_scores = np.empty((pending.size, 0), np.int32), np.empty((pending.size, 0), np.float32)
        while pending.size:
            found = users[pending] @ self.factors[start:stop].T
            found = np.hstack((best_scores, found))
            kth = np.partition(found, found.shape[1] - k, axis=1)[:, found.shape[1] - k]
            slack = ROUNDING * user_norms[pending] * max(self.next_norm[0], 1e-30)
            best_ids, best_scores = self._best(found, kth - slack, k, best_ids, start, users[pending])
            bound = user_norms[pending] * self.next_norm[stop] * (1 + SAFETY)
            settled = (kth > bound) | (stop == n_items)
            ids[pending[settled]], scores[pending[settled]] = best_ids[settled], best_scores[settled]
            pending, best_ids, best_scores = pending[~settled], best_ids[~settled], best_scores[~settled]
            start, stop = stop, min(2 * stop, n_items)
        return CandidateBlock(ids.ravel(), scores.ravel(), run_offsets(np.full(users.shape[0], k, dtype=np.int64)))

    def _best(
        self,
        found: npt.NDArray[np.float32],
        low: npt.NDArray[np.float64],
        k: int,
        best_ids: npt.NDArray[np.int32],
        start: int,
        users: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Each row's ``k`` best of ``found`` by their exact scores, best first, ties by item
        index: its first ``best_ids.shape[1]`` columns are the items of ``best_ids``, the rest
        items ``start`` on in norm order; only those at or above the row's ``low`` can be."""
        owner, column = np.nonzero(found >= low[:, None])
        carried = column < best_ids.shape[1]
        item = np.where(carried, 0, self.order[np.maximum(column - best_ids.shape[1] + start, 0)])
        item[carried] = best_ids[owner[carried], column[carried]]
        rows = self.factors[self.position[item]].astype(np.float64)
        score = np.einsum("ij,ij->i", users[owner].astype(np.float64), rows).astype(np.float32)
        order = np.lexsort((item, -score, owner))
        owner, item, score = owner[order], item[order], score[order]
        rank = np.arange(owner.size) - run_offsets(np.bincount(owner, minlength=found.shape[0]))[owner]
        top = rank < k  # ties at the k-th score may have let in a few more
        return item[top].reshape(-1, k), score[top].reshape(-1, k)
