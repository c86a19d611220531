"""``als``: implicit's Alternating Least Squares matrix factorisation. Also answers SimilarItems."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import numpy.typing as npt
from endcap.plugins._shared import KnownUserMemo, known_users_together, similar_from, top_n, user_row
from endcap.plugins.inner_product_top import NormOrderedItems
from endcap.types import IndexArray, TrainingData
from implicit.cpu.als import AlternatingLeastSquares
from implicit.nearest_neighbours import bm25_weight
from pydantic import Field


class AlsCandidatesConfig(endcap.ComponentConfig):
    factors: int = Field(64, ge=1)
    iterations: int = Field(8, ge=1)
    """Alternations of user and item solves. Eight match fifteen within noise on the demo's test
    basket and on generated logs (where fifteen over-fit a little), in half of the time:
    the model is fitted twice in a training run (history, then the whole log)."""
    regularization: float = Field(0.05, ge=0)
    bm25_k1: float = Field(100.0, gt=0)
    bm25_b: float = Field(0.8, ge=0, le=1)
    random_state: int = 42
    memo_users: int = Field(100_000, ge=0)
    """Known users whose candidates are kept in memory between requests (least recently used
    dropped first; about 1 KB each); 0 computes them on every request."""


class AlsCandidates(endcap.CandidateGenerator):
    """Latent-factor candidates: items whose factors align with the user's."""

    Config = AlsCandidatesConfig
    config: AlsCandidatesConfig

    def _weighted(self, user_items: Any) -> Any:
        return bm25_weight(user_items, K1=self.config.bm25_k1, B=self.config.bm25_b).tocsr().astype(np.float32)

    def _weighted_new(self, row: Any) -> Any:
        """:func:`bm25_weight` of one new user's row, with the idf and average length of training."""
        k1, b = self.config.bm25_k1, self.config.bm25_b
        row = row.tocsr().astype(np.float32)
        norm = (1.0 - b) + b * float(row.data.sum()) / self._average_length
        row.data = row.data * (k1 + 1.0) / (k1 * norm + row.data) * self._idf[row.indices]
        return row

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        model = AlternatingLeastSquares(
            factors=self.config.factors,
            iterations=self.config.iterations,
            regularization=self.config.regularization,
            random_state=self.config.random_state,
        )
        model.fit(self._weighted(data.user_items), show_progress=False)
        model.save(str(directory / "als.npz"))
        return self.config.model_dump()

    def load(self, context: endcap.ModelContext) -> None:
        self.model = AlternatingLeastSquares.load(str(context.directory / "als.npz"))
        self._by_norm = NormOrderedItems(self.model.item_factors)
        # the training matrix as is: only a new user's row is weighted (the model's own factors
        # answer a known user), so weighting every row at load would cost seconds for nothing
        self.user_items = context.user_items
        # BM25 statistics of the training matrix, to weight the row of a user it has not seen
        # (weighting that one row on its own would give every item a negative idf)
        users, items = context.user_items.shape
        df = np.bincount(context.user_items.indices, minlength=items)
        self._idf = (np.log(max(users, 1)) - np.log1p(df)).astype(np.float32)
        self._average_length = float(context.user_items.sum()) / max(users, 1) or 1.0
        self._known_user = KnownUserMemo(self.config.memo_users)

    def _score_known_user(self, user_index: int, n: int) -> endcap.Candidates:
        """The ``n`` best items by the factors' inner product (see :mod:`endcap.plugins.inner_product_top`)."""
        return self._by_norm.top(self.model.user_factors[user_index : user_index + 1], n).row(0)

    def prefetch(self, user_indices: IndexArray, n: int) -> None:
        """A block of known users at once (:meth:`generate_block`'s product), kept in the memo."""
        self._known_tops(user_indices, n)

    def _known_tops(self, user_indices: IndexArray, n: int) -> endcap.CandidateBlock:
        """The ``n`` best of each known user, scored together, kept in the memo so that a request
        for one of them right after gets the same answer (one user's product can round a last
        bit differently from the block's)."""
        n = min(n, self.user_items.shape[1])
        found = self._by_norm.top(self.model.user_factors[user_indices], n)
        for j, user_index in enumerate(user_indices.tolist()):
            self._known_user.put(user_index, n, found.row(j))
        return found

    def generate_block(self, block: endcap.UserBlock, n: npt.NDArray[np.int64]) -> endcap.CandidateBlock:
        """The block's known users scored and selected together (see :meth:`_known_tops`); new
        users folded in one at a time."""
        return known_users_together(block, n, self._known_tops, self.generate)

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        n = min(n, self.user_items.shape[1])  # implicit pads with repeats past the catalogue
        if query.user_index >= 0:
            return self._known_user(query.user_index, n, self._score_known_user)
        row = user_row(query, user, self.user_items)
        if row is None:
            return endcap.Candidates.empty()
        ids, scores = self.model.recommend(
            0, self._weighted_new(row), N=n, filter_already_liked_items=False, recalculate_user=True
        )
        return top_n(np.asarray(ids, dtype=np.int32), np.asarray(scores, dtype=np.float32), n)

    def similar(self, item_index: int, n: int) -> endcap.Candidates:
        return similar_from(self.model, item_index, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(AlsCandidates, type_name="als")
