"""endcap-promotions: drop out-of-stock products and boost promoted ones, from Feast; and give
the learned ranker each product's promotion as a feature."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import endcap
import numpy as np
from pydantic import Field

VIEW = "product_availability"
FILE = "product_availability.parquet"


class PromotionsFilterConfig(endcap.ComponentConfig):
    boost: float = Field(2.0, ge=0)
    """Added to a fully promoted product's score (times its ``promotion_boost``)."""


class PromotionsFilter(endcap.Filter):
    """Never shows out-of-stock products; moves promoted ones up."""

    Config = PromotionsFilterConfig
    config: PromotionsFilterConfig

    def load(self, context: endcap.ModelContext) -> None:
        n = context.catalog.n_items
        self.in_stock = np.ones(n, dtype=bool)
        self.promotion = np.zeros(n, dtype=np.float32)
        if context.product_features is None:
            return
        try:
            frame = context.product_features([f"{VIEW}:in_stock", f"{VIEW}:promotion_boost"])
        except Exception:  # the view is not in this feature store: nothing is out of stock
            return
        stock = frame["in_stock"].to_numpy(dtype=np.float64, na_value=np.nan)
        self.in_stock = ~(stock == 0)
        self.promotion = np.nan_to_num(frame["promotion_boost"].to_numpy(dtype=np.float32, na_value=np.nan))

    def keep(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return self.in_stock[ids]

    def boost(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return self.promotion[ids] * np.float32(self.config.boost)


class PromotionFeatures(endcap.FeatureProvider):
    """``promotions.boost``: the product's promotion (0 when none), so the ranker learns how much
    a promotion moves what shoppers buy. Point-in-time in training, from the online store when
    serving: the same column in both."""

    def product_references(self) -> tuple[str, ...]:
        return (f"{VIEW}:promotion_boost",)

    def names(self) -> tuple[str, ...]:
        return ("promotions.boost",)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return np.nan_to_num(products[ids], copy=True)


@endcap.hookimpl
def endcap_api_version() -> int:
    return 1


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(PromotionsFilter, type_name="promotions")
    registry.add(PromotionFeatures, type_name="promotion_features")


@endcap.hookimpl
def endcap_feast_objects(features_dir: Path) -> list[Any] | None:
    path = features_dir / FILE
    if not path.exists():
        return None
    from endcap.feature_repo.definitions import product
    from feast import FeatureView, Field, FileSource
    from feast.types import Float32, Int64

    source = FileSource(
        name=f"{VIEW}_source",
        path=str(path),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )
    view = FeatureView(
        name=VIEW,
        entities=[product],
        ttl=timedelta(days=3650),
        schema=[Field(name="in_stock", dtype=Int64), Field(name="promotion_boost", dtype=Float32)],
        source=source,
    )
    return [view]
