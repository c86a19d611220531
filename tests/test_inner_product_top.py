"""Exact top-k by inner product over items ordered by norm (:mod:`endcap.plugins.inner_product_top`)."""

from __future__ import annotations

import numpy as np
import pytest
from endcap.plugins.inner_product_top import NormOrderedItems


def full_scoring_top(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item scored (the exact products rounded to float32), each row's ``k`` best by
    score, then item index."""
    scores = (users.astype(np.float64) @ items.astype(np.float64).T).astype(np.float32)
    order = np.array([np.lexsort((np.arange(items.shape[0]), -row))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


def factors(rng: np.random.Generator, n: int, skew: float) -> np.ndarray:
    """Random factors whose norms fall off as ``rank ** -skew`` (0: all alike)."""
    base = rng.standard_normal((n, 16)).astype(np.float32)
    return (base * (np.arange(1, n + 1) ** -skew)[rng.permutation(n), None]).astype(np.float32)


@pytest.mark.parametrize("skew", [0.0, 0.5, 1.5])
@pytest.mark.parametrize("first_prefix", [8, 300])
def test_the_top_equals_scoring_every_item(skew: float, first_prefix: int) -> None:
    """Whatever the spread of norms and the first prefix, the answer is the full scoring's,
    order and scores included, negative scores too."""
    rng = np.random.default_rng(int(skew * 10) + first_prefix)
    items, users = factors(rng, 2000, skew), rng.standard_normal((70, 16)).astype(np.float32)
    found = NormOrderedItems(items, first_prefix).top(users, 25)
    ids, scores = full_scoring_top(users, items, 25)
    assert np.array_equal(found.ids.reshape(70, 25), ids)
    assert np.allclose(found.scores.reshape(70, 25), scores, rtol=1e-5, atol=1e-6)
    assert np.array_equal(found.offsets, np.arange(71) * 25)


def test_equal_scores_are_ordered_by_item_index() -> None:
    """Copies of one item score alike: they come in index order, wherever they sit by norm."""
    rng = np.random.default_rng(3)
    items = factors(rng, 400, 1.0)
    copies = [5, 77, 150, 399]
    items[copies] = items[copies[0]] * 50  # large norms: among everyone's first items
    users = np.abs(rng.standard_normal((10, 16))).astype(np.float32) * np.sign(items[5])
    found = NormOrderedItems(items, 8).top(users, 6).ids.reshape(10, 6)
    ids, _ = full_scoring_top(users, items, 6)
    assert np.array_equal(found, ids)
    assert (found[:, :4] == copies).all()


def test_more_wanted_than_the_catalogue_holds_gives_the_whole_catalogue() -> None:
    rng = np.random.default_rng(4)
    items, users = factors(rng, 30, 1.0), rng.standard_normal((3, 16)).astype(np.float32)
    found = NormOrderedItems(items, 8).top(users, 100)
    assert np.array_equal(found.lengths, [30, 30, 30])
    assert np.array_equal(found.ids.reshape(3, 30), full_scoring_top(users, items, 30)[0])
    assert NormOrderedItems(items).top(users, 0).ids.size == 0
