"""Helpers shared by the built-in components: top-n selection and the user's purchase row."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from endcap.types import CandidateBlock, Candidates, IndexArray, Query, ScoreArray, UserFeatures, read_only, run_offsets


def top_n(ids: IndexArray, scores: ScoreArray, n: int) -> Candidates:
    """The ``n`` highest-scoring entries, best first (ties broken by position)."""
    if n <= 0 or ids.size == 0:
        return Candidates.empty()
    if ids.size > n:
        # every score at or above the n-th best (a partition is cheaper than argpartition here)
        keep = np.flatnonzero(scores >= np.partition(scores, scores.size - n)[scores.size - n])
        ids, scores = ids[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:n]  # ties at the n-th score may have added a few
    return Candidates(ids[order].astype(np.int32, copy=False), scores[order].astype(np.float32, copy=False))


def best_first_order(owner: npt.NDArray[np.int64], scores: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """The order of entries by owner (ascending), then score (as float32) descending, then
    position: one stable radix sort of a 64-bit key (owner, then the float32 score's bits
    inverted, which order positive floats as their values do) instead of a three-key lexsort,
    several times slower."""
    if scores.size and scores.min() <= 0:  # the bit trick holds for positive scores only
        return np.lexsort((np.arange(scores.size), -scores, owner))
    inverted = np.int64(0xFFFFFFFF) - scores.astype(np.float32).view(np.uint32).astype(np.int64)
    return np.argsort((owner << 32) | inverted, kind="stable")


class BestFirstRows:
    """A users × items score matrix with each row ordered best first once, at load (ties by
    position in the row, as :func:`top_n` breaks them): a user's top ``n`` is then a slice."""

    FILE = "ranked.npz"

    def __init__(self, starts: npt.NDArray[Any], ids: IndexArray, scores: ScoreArray) -> None:
        self.starts = read_only(starts)
        self.ids = read_only(ids.astype(np.int32, copy=False))
        self.scores = read_only(scores.astype(np.float32, copy=False))

    @classmethod
    def ordered(cls, scores: sp.csr_matrix) -> BestFirstRows:
        """``scores``' rows ordered best first (one sort of every entry)."""
        rows = np.repeat(np.arange(scores.shape[0], dtype=np.int64), np.diff(scores.indptr))
        order = best_first_order(rows, scores.data)
        return cls(scores.indptr, scores.indices[order], scores.data[order])

    def save(self, directory: Path) -> None:
        """Write the ordered arrays (at ``fit``: loading them then needs no sort)."""
        np.savez(directory / self.FILE, starts=self.starts, ids=self.ids, scores=self.scores)

    @classmethod
    def load(cls, directory: Path) -> BestFirstRows:
        """What :meth:`save` wrote; from a version saved before it, ``scores.npz``'s matrix, ordered."""
        if not (directory / cls.FILE).exists():
            return cls.ordered(cast(sp.csr_matrix, sp.load_npz(directory / "scores.npz")).tocsr())
        with np.load(directory / cls.FILE) as arrays:
            return cls(arrays["starts"], arrays["ids"], arrays["scores"])

    def top_block(self, user_indices: IndexArray, n: IndexArray) -> CandidateBlock:
        """:meth:`top` of every user in ``user_indices`` (with ``n[j]`` for the ``j``-th), gathered
        in one pass over the ordered arrays."""
        known = user_indices >= 0
        starts = np.where(known, self.starts[np.maximum(user_indices, 0)], 0).astype(np.int64)
        ends = np.where(known, self.starts[np.maximum(user_indices, 0) + 1], 0).astype(np.int64)
        lengths = np.clip(np.minimum(ends - starts, n.astype(np.int64)), 0, None)
        offsets = run_offsets(lengths)
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return CandidateBlock(self.ids[positions], self.scores[positions], offsets)

    def top(self, user_index: int, n: int) -> Candidates:
        """Row ``user_index``'s ``n`` best entries, best first; none for an unknown user (-1)."""
        if user_index < 0 or n <= 0:
            return Candidates.empty()
        start = int(self.starts[user_index])
        end = min(int(self.starts[user_index + 1]), start + n)
        return Candidates(self.ids[start:end], self.scores[start:end])


def user_history(
    query: Query, user: UserFeatures, user_items: sp.csr_matrix
) -> tuple[IndexArray, npt.NDArray[np.float32]] | None:
    """The user's purchased item indices and counts: from training when the model knows the
    user, else from the feature store's purchase arrays; ``None`` when there is no history."""
    if query.user_index >= 0:
        return known_user_history(user_items, query.user_index)
    if user.items.size == 0:
        return None
    return user.items, user.item_stats.get("times_bought", np.ones(user.items.size, dtype=np.float32))


def known_user_history(user_items: sp.csr_matrix, user_index: int) -> tuple[IndexArray, npt.NDArray[np.float32]] | None:
    """Row ``user_index`` of the training matrix as (item indices, counts), read from the CSR arrays."""
    start, end = user_items.indptr[user_index], user_items.indptr[user_index + 1]
    if start == end:
        return None
    return user_items.indices[start:end], user_items.data[start:end]


def user_row(query: Query, user: UserFeatures, user_items: sp.csr_matrix) -> sp.csr_matrix | None:
    """:func:`user_history` as a 1 × items sparse row."""
    history = user_history(query, user, user_items)
    if history is None:
        return None
    columns, counts = history
    return sp.csr_matrix(
        (counts.astype(np.float32), (np.zeros(columns.size, dtype=np.int32), columns)),
        shape=(1, user_items.shape[1]),
    )


def neighbour_scores(similarity: sp.csr_matrix, items: IndexArray, weights: npt.NDArray[Any], n: int) -> Candidates:
    """The ``n`` best items of ``weights @ similarity[items]`` (an items × items matrix whose
    row ``i`` holds the neighbours of ``i``), gathered straight from the CSR arrays."""
    starts = similarity.indptr[items]
    lengths = similarity.indptr[items + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return Candidates.empty()
    # positions of every stored neighbour of every item, in one array
    positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    contributions = similarity.data[positions] * np.repeat(weights, lengths)
    dense = np.bincount(similarity.indices[positions], contributions, minlength=similarity.shape[1])
    ids = np.flatnonzero(dense)
    return top_n(ids.astype(np.int32), dense[ids].astype(np.float32), n)


def similar_from(model: Any, item_index: int, n: int) -> Candidates:
    """``n`` neighbours of ``item_index`` from an implicit model, the item itself left out."""
    ids, scores = model.similar_items(item_index, N=n + 1)
    keep = ids != item_index
    return top_n(np.asarray(ids[keep], dtype=np.int32), np.asarray(scores[keep], dtype=np.float32), n)


class KnownUserMemo:
    """Candidates of known users behind a bounded LRU memo (``users`` entries; 0: no memo).

    For a user the model was trained on, a factor or item-item model's answer depends only on the
    loaded model, so it is computed once per model load and shared, read-only, by later requests.
    ``put`` lets a batch job fill it for a block of users computed together. The memo does not
    keep the function that computes an answer (a bound method of the component that owns the
    memo would make a reference cycle, which only the garbage collector can free): each call
    passes it.
    """

    def __init__(self, users: int) -> None:
        self.users = users
        self._entries: OrderedDict[int, tuple[int, Candidates]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, user_index: int, n: int, generate: Callable[[int, int], Candidates]) -> Candidates:
        """The memoised answer for ``user_index`` cut to ``n`` when one was kept for ``n`` or
        more (the answers are best first, ties by position, so the first ``n`` of a longer one
        are the answer for ``n``), else ``generate(user_index, n)`` kept."""
        with self._lock:
            found = self._entries.get(user_index)
            if found is not None and found[0] >= n:
                self._entries.move_to_end(user_index)
                kept = found[1]
                return kept if len(kept) <= n else Candidates(kept.ids[:n], kept.scores[:n])
        result = generate(user_index, n)
        self.put(user_index, n, result)
        return result

    def put(self, user_index: int, n: int, result: Candidates) -> None:
        """Keep ``result``, the answer for ``n``."""
        if self.users <= 0:
            return
        result.ids.flags.writeable = False
        result.scores.flags.writeable = False
        with self._lock:
            self._entries[user_index] = (n, result)
            self._entries.move_to_end(user_index)
            while len(self._entries) > self.users:
                self._entries.popitem(last=False)
