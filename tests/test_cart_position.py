"""The ``cart_position`` feature provider: where in their baskets shoppers put each product."""

from __future__ import annotations

from pathlib import Path

import endcap
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from endcap.data.training_data import build_training_data
from endcap.plugins.cart_position import CartPositionFeatures
from endcap.types import Query, UserBlock, UserFeatures

NO_PRODUCTS = np.zeros((0, 0), np.float32)


def log(positions: bool) -> pd.DataFrame:
    """Two shoppers. ``a`` puts milk (m) first in both of her baskets and eggs (e) last;
    ``b`` puts eggs first in his one basket of three lines, with bread (r) in the middle."""
    rows = [
        ("a", "m", "a1", "2031-02-03", 1),
        ("a", "e", "a1", "2031-02-03", 2),
        ("a", "m", "a2", "2031-02-10", 1),
        ("a", "x", "a2", "2031-02-10", 2),
        ("a", "e", "a2", "2031-02-10", 3),
        ("b", "e", "b1", "1998-07-01", 1),
        ("b", "r", "b1", "1998-07-01", 2),
        ("b", "m", "b1", "1998-07-01", 3),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "basket_id", "timestamp", "cart_position"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["quantity"] = np.int32(1)
    return frame if positions else frame.drop(columns="cart_position")


def fitted(frame: pd.DataFrame, directory: Path) -> tuple[CartPositionFeatures, endcap.TrainingData, dict]:
    data = build_training_data(frame)
    provider = CartPositionFeatures("cart_position", {})
    params = dict(provider.fit(data, directory))
    provider.load(endcap.ModelContext(data.catalog, data.user_items, directory))
    return provider, data, params


def ids_of(data: endcap.TrainingData, *items: str) -> np.ndarray:
    return np.searchsorted(data.catalog.item_ids, np.array(items)).astype(np.int32)


def test_each_shoppers_mean_place_in_the_basket_and_each_products_across_shoppers(tmp_path: Path) -> None:
    provider, data, params = fitted(log(positions=True), tmp_path)
    assert params == {"lines_with_position": 8, "lines": 8}
    assert provider.names() == ("cart_position.user_item", "cart_position.item")
    a = int(np.searchsorted(data.catalog.user_ids, "a"))
    values = provider.compute(Query("a", a, 10), UserFeatures({}), ids_of(data, "m", "e", "x", "r"), NO_PRODUCTS)
    np.testing.assert_allclose(values[:3, 0], [0.0, 1.0, 0.5])  # milk first, eggs last, x in the middle
    assert values[3, 0] == -1.0  # bread: never in her baskets
    # across shoppers: milk first, first and last (1/3); eggs last, last and first (2/3); bread in the middle
    np.testing.assert_allclose(values[:, 1], [1 / 3, 2 / 3, 0.5, 0.5])
    unseen = provider.compute(Query("z", -1, 10), UserFeatures({}), ids_of(data, "m"), NO_PRODUCTS)
    assert unseen[0, 0] == -1.0 and unseen[0, 1] == pytest.approx(1 / 3)


def test_a_block_of_shoppers_gets_what_each_gets_alone(tmp_path: Path) -> None:
    provider, data, _ = fitted(log(positions=True), tmp_path)
    queries = tuple(Query(user, int(np.searchsorted(data.catalog.user_ids, user)), 10) for user in ("b", "a"))
    queries += (Query("z", -1, 10),)
    candidates = [ids_of(data, "e", "r", "m"), ids_of(data, "x", "m"), ids_of(data, "e")]
    offsets = np.concatenate([[0], np.cumsum([c.size for c in candidates])]).astype(np.int64)
    block = UserBlock(queries, tuple(UserFeatures({}) for _ in queries))
    together = provider.compute_block(block, np.concatenate(candidates), offsets, NO_PRODUCTS)
    alone = np.vstack(
        [provider.compute(q, UserFeatures({}), c, NO_PRODUCTS) for q, c in zip(queries, candidates, strict=True)]
    )
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_allclose(together[:3, 0], [0.0, 0.5, 1.0])  # b: eggs, bread, milk


def test_a_log_without_positions_trains_with_unknown_columns_and_says_so(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        provider, data, params = fitted(log(positions=False), tmp_path)
    assert params == {"lines_with_position": 0}
    assert [entry["event"] for entry in logs] == ["cart_positions_unknown"]
    values = provider.compute(Query("a", 0, 10), UserFeatures({}), ids_of(data, "m", "e"), NO_PRODUCTS)
    assert (values == -1.0).all()
    # the catalogue may list products no line placed (bought only in baskets without positions)
    catalog = endcap.Catalog(data.catalog.user_ids, np.array(["e", "m", "new"]))
    provider.load(endcap.ModelContext(catalog, sp.csr_matrix((2, 3), dtype=np.float32), tmp_path))
    assert (provider.compute(Query("a", 0, 10), UserFeatures({}), np.array([2], np.int32), NO_PRODUCTS) == -1).all()
