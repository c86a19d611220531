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
from endcap.types import (
    CandidateBlock,
    Candidates,
    IndexArray,
    Query,
    ScoreArray,
    UserBlock,
    UserFeatures,
    read_only,
    run_offsets,
)


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

    ARRAYS = ("starts", "ids", "scores")
    """Saved as ``ranked-<name>.npy`` each, memory-mapped at load: nothing is copied (a million
    users' rows are gigabytes), the pages are shared by every process serving the version and
    read as requests touch them."""

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
        for name in self.ARRAYS:
            np.save(directory / f"ranked-{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: Path) -> BestFirstRows:
        """What :meth:`save` wrote, memory-mapped; from a version saved before, ``ranked.npz``'s
        arrays, or ``scores.npz``'s matrix, ordered."""
        if (directory / "ranked-ids.npy").exists():
            starts, ids, scores = (np.load(directory / f"ranked-{name}.npy", mmap_mode="r") for name in cls.ARRAYS)
            return cls(starts, ids, scores)
        if (directory / "ranked.npz").exists():
            with np.load(directory / "ranked.npz") as arrays:
                return cls(arrays["starts"], arrays["ids"], arrays["scores"])
        return cls.ordered(cast(sp.csr_matrix, sp.load_npz(directory / "scores.npz")).tocsr())

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
    """The ``n`` best items of ``weights @ similarity[items]`` (:func:`neighbour_tops` of one user)."""
    history = sp.csr_matrix(
        (weights, items, np.array([0, items.size])), shape=(1, similarity.shape[0]), dtype=np.float64
    )
    return neighbour_tops(similarity, history, n).row(0)


def neighbour_tops(similarity: sp.csr_matrix, histories: sp.csr_matrix, n: int) -> CandidateBlock:
    """Each row's ``n`` best items of ``histories @ similarity`` (users × items purchase weights
    times an items × items matrix whose row ``i`` holds the neighbours of ``i``): summed in
    float64 in the order of each row's history, best first, ties by item index."""
    owner, _, item, score = top_of_product(histories, similarity, n)
    return CandidateBlock(item, score, run_offsets(np.bincount(owner, minlength=histories.shape[0])))


def top_of_product(left: sp.csr_matrix, right: sp.csr_matrix, k: int) -> tuple[npt.NDArray[Any], ...]:
    """:func:`top_of_rows` of ``left @ right``, multiplied and summed in float64 and rounded to
    float32 before ranking (sums that are equal stay equal)."""
    scores = left.astype(np.float64, copy=False) @ right.astype(np.float64, copy=False)
    scores.data = scores.data.astype(np.float32)
    scores.eliminate_zeros()
    scores.sort_indices()
    return top_of_rows(scores, k)


def top_of_rows(scores: sp.csr_matrix, k: int, rows_at_once: int = 64) -> tuple[np.ndarray, ...]:
    """Each row's ``k`` largest positive entries of ``scores`` (sorted indices), best first, ties
    by column: ``(row, rank, column, score)``. Only entries at or above their row's ``k``-th
    largest are sorted, the floor found by one partition of the longer rows, ``rows_at_once``
    of about the same length at a time (little padding)."""
    if k <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, scores.indices[:0], scores.data[:0]
    counts = np.diff(scores.indptr)
    floor = np.zeros(scores.shape[0], dtype=scores.data.dtype)
    longer = np.flatnonzero(counts > k)
    longer = longer[np.argsort(counts[longer], kind="stable")]
    for start in range(0, longer.size, rows_at_once):
        part = longer[start : start + rows_at_once]
        lengths = counts[part]
        width = int(lengths.max())
        offsets = run_offsets(lengths)
        column = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        # scores are positive: a negative pad never rises to the floor. The pads are distinct
        # and shuffled: a partition slows to a crawl among many equal or ordered values.
        pads = -1.0 - np.random.default_rng(width).permutation(width).astype(scores.data.dtype)
        padded = np.tile(pads, (part.size, 1))
        padded[np.repeat(np.arange(part.size), lengths), column] = scores.data[
            np.repeat(scores.indptr[part], lengths) + column
        ]
        floor[part] = np.partition(padded, width - k, axis=1)[:, width - k]
    kept = (scores.data >= np.repeat(floor, counts)) & (scores.data > 0)
    owner = np.repeat(np.arange(scores.shape[0], dtype=np.int64), counts)[kept]
    item, score = scores.indices[kept], scores.data[kept]
    order = best_first_order(owner, score)
    owner, item, score = owner[order], item[order], score[order]
    rank = np.arange(owner.size) - run_offsets(np.bincount(owner, minlength=scores.shape[0]))[owner]
    top = rank < k
    return owner[top], rank[top], item[top], score[top]


def known_users_together(
    block: UserBlock,
    n: npt.NDArray[np.int64],
    known_tops: Callable[[IndexArray, int], CandidateBlock],
    generate: Callable[[Query, UserFeatures, int], Candidates],
) -> CandidateBlock:
    """:meth:`CandidateGenerator.generate_block` from one call of ``known_tops(user_indices, n)``
    for the block's known users (each one's ``max(n)`` best, best first, cut to the row's ``n``);
    users the model does not know are answered by ``generate`` one at a time."""
    known = block.user_indices >= 0
    wanted = int(n[known].max(initial=0))
    if wanted > 0:
        found = known_tops(block.user_indices[known], wanted).first(n[known])
    else:
        found = CandidateBlock.join([Candidates.empty()] * int(known.sum()))
    if known.all():
        return found
    answers = iter(range(found.lengths.size))
    return CandidateBlock.join(
        [
            found.row(next(answers)) if is_known else generate(query, user, int(m))
            for query, user, m, is_known in zip(block.queries, block.users, n.tolist(), known.tolist(), strict=True)
        ]
    )


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
