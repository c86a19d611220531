"""``repurchase``: the user's own past purchases, by frequency with recency decay.

Grocery shoppers re-buy: a product bought in many recent orders is the likeliest next purchase.
Each past purchase counts ``0.5 ** (orders_ago / half_life_orders)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import scipy.sparse as sp
from endcap.plugins._shared import BestFirstRows
from endcap.types import TrainingData
from pydantic import Field


class RepurchaseCandidatesConfig(endcap.ComponentConfig):
    half_life_orders: float = Field(5.0, gt=0)
    """After this many newer orders a purchase counts half as much."""


class RepurchaseCandidates(endcap.CandidateGenerator):
    Config = RepurchaseCandidatesConfig
    config: RepurchaseCandidatesConfig

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        frame = data.interactions
        users = frame["user_index"].to_numpy()
        baskets = frame["basket_index"].to_numpy()
        last = np.zeros(data.catalog.n_users, dtype=np.int64)
        np.maximum.at(last, users, baskets)
        weights = np.power(0.5, (last[users] - baskets) / self.config.half_life_orders).astype(np.float32)
        scores = sp.csr_matrix(
            (weights, (users, frame["item_index"].to_numpy())), shape=(data.catalog.n_users, data.catalog.n_items)
        )
        scores.sum_duplicates()
        BestFirstRows.ordered(scores).save(directory)
        return {"half_life_orders": self.config.half_life_orders}

    def load(self, context: endcap.ModelContext) -> None:
        self._ranked = BestFirstRows.load(context.directory)

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return self._ranked.top(query.user_index, n)

    def generate_block(self, block: endcap.UserBlock, n: np.ndarray) -> endcap.CandidateBlock:
        return self._ranked.top_block(block.user_indices, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(RepurchaseCandidates, type_name="repurchase")
