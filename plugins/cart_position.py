"""``cart_position``: where in their baskets shoppers put a product, from the log's optional
``cart_position`` column (Instacart's ``add_to_cart_order``).

A product a shopper puts in the cart first is one they came for; one added last is an
afterthought. Positions are relative to the basket: 0 for the first line, 1 for the last.

* ``cart_position.user_item``: the mean relative position of the candidate in the user's own
  baskets;
* ``cart_position.item``: its mean relative position in everyone's baskets.

:data:`UNKNOWN` where there is nothing to measure: a candidate the user never bought, a product
nobody's log line placed, a user the model has not seen, or a log without positions (its fit
says so in its log line and its parameters; the ranker then learns nothing from the columns).

Not a default: on the demo's validation and test baskets it changes NDCG@10 by less than its
paired interval (``bench/accuracy_ablations.py``). Add it with
``features: {cart_position: {type: cart_position}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import structlog
from endcap.plugins.ranking_features import UNKNOWN, rows_of

log = structlog.get_logger("endcap.plugins.cart_position")
NAMES = ("user_item", "item")
TABLE = "positions.npz"


class CartPositionFeatures(endcap.FeatureProvider):
    def fit(self, data: endcap.TrainingData, directory: Path) -> Mapping[str, Any]:
        frame = data.interactions
        n_items = data.catalog.n_items
        positions = (
            frame["cart_position"].to_numpy(np.int64) if "cart_position" in frame.columns else np.zeros(0, np.int64)
        )
        known = np.flatnonzero(positions > 0)
        if not known.size:
            log.warning(
                "cart_positions_unknown",
                provider=self.name,
                lines=len(frame),
                reason="the log has no add_to_cart_order column, or none of its lines fills it: ingest a log "
                "with it, or drop this provider from features: in endcap.yaml",
            )
            np.savez(directory / TABLE, keys=np.zeros(0, np.int64), user_item=np.zeros(0, np.float32),
                     item=np.full(n_items, UNKNOWN, np.float32))  # fmt: skip
            return {"lines_with_position": 0}
        users = frame["user_index"].to_numpy(np.int64)[known]
        items = frame["item_index"].to_numpy(np.int64)[known]
        relative = _relative(users, frame["basket_index"].to_numpy(np.int64)[known], positions[known])
        keys, pair = np.unique(users * n_items + items, return_inverse=True)
        per_item = np.bincount(items, relative, n_items) / np.maximum(np.bincount(items, minlength=n_items), 1)
        np.savez(
            directory / TABLE,
            keys=keys,
            user_item=(np.bincount(pair, relative) / np.bincount(pair)).astype(np.float32),
            item=np.where(np.bincount(items, minlength=n_items) > 0, per_item, UNKNOWN).astype(np.float32),
        )
        return {"lines_with_position": int(known.size), "lines": len(frame)}

    def load(self, context: endcap.ModelContext) -> None:
        with np.load(context.directory / TABLE) as table:
            self.keys, self.user_item, self.item = table["keys"], table["user_item"], table["item"]
        self.n_items = context.catalog.n_items

    def names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}.{name}" for name in NAMES)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return self._values(np.full(ids.size, query.user_index, dtype=np.int64), ids)

    def compute_block(
        self, block: endcap.UserBlock, ids: np.ndarray, offsets: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return self._values(block.user_indices.astype(np.int64)[rows_of(offsets)], ids)

    def _values(self, users: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Both columns for candidates ``ids`` of ``users`` (one user per candidate)."""
        ids = ids.astype(np.int64)
        values = np.full((ids.size, 2), UNKNOWN, dtype=np.float32)
        inside = (ids >= 0) & (ids < self.item.size)
        values[inside, 1] = self.item[ids[inside]]
        if self.keys.size:
            keys = np.where(users >= 0, users * self.n_items + ids, -1)
            at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
            found = (self.keys[at] == keys) & (users >= 0)
            values[found, 0] = self.user_item[at[found]]
        return values


def _relative(users: np.ndarray, baskets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each line's position in its basket from 0 (first) to 1 (last), by the positions known in
    that basket; 0 in a basket with one known line."""
    basket_keys, basket = np.unique((users << 32) | baskets, return_inverse=True)
    first = np.full(basket_keys.size, np.iinfo(np.int64).max)
    last = np.zeros(basket_keys.size, np.int64)
    np.minimum.at(first, basket, positions)
    np.maximum.at(last, basket, positions)
    span = (last - first)[basket]
    return np.where(span > 0, (positions - first[basket]) / np.maximum(span, 1), 0.0)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(CartPositionFeatures, type_name="cart_position")
