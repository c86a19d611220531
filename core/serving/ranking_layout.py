"""The ranking feature layout: the fixed order of the feature matrix's columns, and the code that
writes them. Serving and training (:mod:`endcap.training.ranking_examples`) both build their
matrices here, so a ranker learns from exactly the layout it is served with.

Columns, in order: one per candidate source (its score scaled to (0, 1], 0 where it did not
propose the item), the user's statistics, the product's statistics, and the user × product ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from endcap.serving.model import PRODUCT_FEATURE_NAMES
from endcap.types import FeatureMatrix, IndexArray, UserFeatures

USER_FEATURE_NAMES = ("user.orders", "user.avg_basket_size", "user.avg_days_between_orders", "user.distinct_items")
USER_STAT_NAMES = tuple(name.split(".", 1)[1] for name in USER_FEATURE_NAMES)
USER_PRODUCT_FEATURE_NAMES = (
    "user_product.times_bought",
    "user_product.bought_share",
    "user_product.orders_since_last_bought",
)

__all__ = [
    "PRODUCT_FEATURE_NAMES",
    "USER_FEATURE_NAMES",
    "USER_PRODUCT_FEATURE_NAMES",
    "USER_STAT_NAMES",
    "RankingLayout",
    "feature_names",
]


def feature_names(source_names: Sequence[str]) -> tuple[str, ...]:
    """Every column's name, for a model whose candidate sources are ``source_names``."""
    return (
        tuple(f"source.{name}" for name in source_names)
        + USER_FEATURE_NAMES
        + PRODUCT_FEATURE_NAMES
        + USER_PRODUCT_FEATURE_NAMES
    )


class RankingLayout:
    """The feature matrix of one model's candidates: ``product_features`` is the model's
    ``n_items × len(PRODUCT_FEATURE_NAMES)`` matrix (see :class:`endcap.serving.model.ServingModel`)."""

    def __init__(self, source_names: Sequence[str], product_features: npt.NDArray[np.float32]) -> None:
        self.names = feature_names(source_names)
        self.product_features = product_features

    def matrix(self, ids: IndexArray, source_scores: npt.NDArray[np.float32], user: UserFeatures) -> FeatureMatrix:
        """The feature matrix of candidates ``ids``, written column block by column block into one
        array; ``source_scores`` is their ``candidates × sources`` matrix."""
        n, sources = ids.size, source_scores.shape[1]
        products = self.product_features
        user_columns = sources + len(USER_FEATURE_NAMES)
        product_columns = user_columns + products.shape[1]
        values = np.empty((n, len(self.names)), dtype=np.float32)
        values[:, :sources] = source_scores
        values[:, sources:user_columns] = [user.stats.get(name, 0.0) for name in USER_STAT_NAMES]
        values[:, user_columns:product_columns] = products[ids]
        self._user_product_columns(values[:, product_columns:], ids, user)
        values.flags.writeable = False
        ids = ids.copy()
        ids.flags.writeable = False
        return FeatureMatrix(ids=ids, names=self.names, values=values)

    @staticmethod
    def _user_product_columns(block: npt.NDArray[np.float32], ids: IndexArray, user: UserFeatures) -> None:
        """Fill ``block`` (a view of the last three columns) with how often and how long ago the
        user bought each candidate, and the share of their orders that held it."""
        times, share, since = block[:, 0], block[:, 1], block[:, 2]
        orders = user.stats.get("orders", 0.0)
        times[:] = 0.0
        since[:] = orders
        if user.items.size and ids.size:
            pos = np.minimum(np.searchsorted(user.items, ids), user.items.size - 1)
            found = np.flatnonzero(user.items[pos] == ids)
            times[found] = user.item_stats["times_bought"][pos[found]]
            since[found] = user.item_stats["orders_since_last_bought"][pos[found]]
        np.divide(times, orders if orders > 0 else 1.0, out=share)
