"""``linear``: a hand-set linear score over the ranking features.

Each feature enters as ``log1p(max(value, 0))`` times its weight; features without a weight
are ignored. Feature names are ``source.<generator>`` (the generator's score scaled to 0..1,
0 when it did not propose the item), ``user.<stat>``, ``product.<stat>`` and
``user_product.<stat>``.
"""

from __future__ import annotations

from typing import Any

import endcap
import numpy as np
import numpy.typing as npt
from endcap.types import ScoreArray

DEFAULT_WEIGHTS: dict[str, float] = {
    "source.repurchase": 2.0,
    "source.tifuknn": 1.0,
    "source.als": 1.0,
    "source.item2item": 1.0,
    "source.popularity": 0.3,
    "user_product.bought_share": 3.0,
    "user_product.orders_since_last_bought": -0.5,
    "product.reorder_rate": 1.0,
    "product.purchases": 0.1,
}


class LinearRankerConfig(endcap.ComponentConfig):
    weights: dict[str, float] = DEFAULT_WEIGHTS


class LinearRanker(endcap.Ranker):
    Config = LinearRankerConfig
    config: LinearRankerConfig

    def __init__(self, name: str, config: LinearRankerConfig) -> None:
        super().__init__(name, config)
        self._weights_by_layout: dict[tuple[str, ...], ScoreArray] = {}

    def _weights(self, names: tuple[str, ...]) -> ScoreArray:
        weights = self._weights_by_layout.get(names)
        if weights is None:
            weights = np.array([self.config.weights.get(n, 0.0) for n in names], dtype=np.float32)
            self._weights_by_layout[names] = weights
        return weights

    def score(self, query: endcap.Query, features: endcap.FeatureMatrix) -> ScoreArray:
        values: npt.NDArray[np.float32] = np.log1p(np.maximum(np.nan_to_num(features.values), 0.0))
        # a sum per row rather than a matrix-vector product: a row's score never depends on how
        # many rows are scored with it (BLAS may add a row up in another order for another size)
        scores: ScoreArray = (values * self._weights(features.names)).sum(axis=1, dtype=np.float32)
        return scores

    def score_block(
        self, block: endcap.UserBlock, features: endcap.FeatureMatrix, offsets: npt.NDArray[np.int64]
    ) -> ScoreArray:
        """Every candidate is scored on its own row: the whole block in one call."""
        return self.score(block.queries[0], features) if len(block) else np.empty(0, dtype=np.float32)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(LinearRanker, type_name="linear")
