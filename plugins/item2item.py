"""``item2item``: co-purchase neighbours from implicit's item-item models (BM25, cosine or TF-IDF)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import endcap
import numpy as np
import numpy.typing as npt
from endcap.plugins._shared import (
    KnownUserMemo,
    known_user_history,
    known_users_together,
    neighbour_scores,
    neighbour_tops,
    similar_from,
    user_history,
)
from endcap.types import CandidateBlock, IndexArray, TrainingData
from implicit.nearest_neighbours import (
    BM25Recommender,
    CosineRecommender,
    ItemItemRecommender,
    TFIDFRecommender,
)
from implicit.utils import ParameterWarning
from pydantic import Field

MODELS: dict[str, type[ItemItemRecommender]] = {
    "bm25": BM25Recommender,
    "cosine": CosineRecommender,
    "tfidf": TFIDFRecommender,
}


class ItemToItemCandidatesConfig(endcap.ComponentConfig):
    similarity: Literal["bm25", "cosine", "tfidf"] = "bm25"
    neighbours: int = Field(50, ge=1)
    """Neighbours kept per item (implicit's ``K``)."""
    memo_users: int = Field(100_000, ge=0)
    """Known users whose candidates are kept in memory between requests (least recently used
    dropped first; about 1 KB each); 0 computes them on every request."""


class ItemToItemCandidates(endcap.CandidateGenerator):
    """Items bought together with what the user bought."""

    Config = ItemToItemCandidatesConfig
    config: ItemToItemCandidatesConfig

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        model = MODELS[self.config.similarity](K=self.config.neighbours)
        with warnings.catch_warnings():  # implicit's own BM25/TF-IDF weighting hands itself a COO matrix
            warnings.filterwarnings("ignore", category=ParameterWarning)
            model.fit(data.user_items, show_progress=False)
        model.save(str(directory / "item2item.npz"))
        return self.config.model_dump()

    def load(self, context: endcap.ModelContext) -> None:
        self.model = MODELS[self.config.similarity].load(str(context.directory / "item2item.npz"))
        self.user_items = context.user_items
        self._similarity = self.model.similarity.astype(np.float64).tocsr()  # scores are summed in float64
        self._known_user = KnownUserMemo(self.config.memo_users)

    def _known_user_candidates(self, user_index: int, n: int) -> endcap.Candidates:
        return self._from_history(known_user_history(self.user_items, user_index), n)

    def _from_history(self, history: tuple[Any, Any] | None, n: int) -> endcap.Candidates:
        if history is None:
            return endcap.Candidates.empty()
        return neighbour_scores(self._similarity, *history, n)

    def _known_tops(self, user_indices: IndexArray, n: int) -> CandidateBlock:
        return neighbour_tops(self._similarity, self.user_items[user_indices], n)

    def generate_block(self, block: endcap.UserBlock, n: npt.NDArray[np.int64]) -> CandidateBlock:
        """The block's known users in one sparse product of their purchase rows with the
        neighbour matrix (the same sums, in the same order, as :meth:`generate`)."""
        return known_users_together(block, n, self._known_tops, self.generate)

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        if query.user_index >= 0:
            return self._known_user(query.user_index, n, self._known_user_candidates)
        return self._from_history(user_history(query, user, self.user_items), n)

    def similar(self, item_index: int, n: int) -> endcap.Candidates:
        return similar_from(self.model, item_index, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(ItemToItemCandidates, type_name="item2item")
