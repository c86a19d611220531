"""``item2item``: co-purchase neighbours from implicit's item-item models (BM25, cosine or TF-IDF)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import endcap
import numpy as np
from endcap.plugins._shared import similar_from, top_n, user_row
from endcap.types import TrainingData
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

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        n = min(n, self.user_items.shape[1])  # implicit pads with repeats past the catalogue
        row = user_row(query, user, self.user_items)
        if row is None:
            return endcap.Candidates.empty()
        ids, scores = self.model.recommend(0, row, N=n, filter_already_liked_items=False)
        return top_n(np.asarray(ids, dtype=np.int32), np.asarray(scores, dtype=np.float32), n)

    def similar(self, item_index: int, n: int) -> endcap.Candidates:
        return similar_from(self.model, item_index, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(ItemToItemCandidates, type_name="item2item")
