"""TIFU-KNN's neighbour search (exact and approximate) and its sparse, block-wise blend."""

from __future__ import annotations

from pathlib import Path

import endcap
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from endcap.data.training_data import build_training_data
from endcap.plugins._shared import BestFirstRows, top_of_rows
from endcap.plugins.tifuknn import (
    TifuKnnCandidates,
    TifuKnnCandidatesConfig,
    blended_top,
    ranked_rows,
)
from endcap.plugins.user_neighbours import (
    NeighbourSearch,
    compact_users,
    inverted_file,
    nearest_neighbours,
    searched_neighbours,
    unit_rows,
)


def clustered_users(
    users: int = 3000, groups: int = 30, items: int = 1500, seed: int = 0
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users in ``groups`` tastes (and each user's group): each buys a dozen items of their
    group's 50 and two at random."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, groups, size=users)
    own = group[:, None] * (items // groups) + rng.integers(0, 50, size=(users, 12))
    noise = rng.integers(0, items, size=(users, 2))
    columns = np.concatenate([own, noise], axis=1)
    rows = np.repeat(np.arange(users), columns.shape[1])
    weights = rng.random(rows.size).astype(np.float32) + 0.1
    matrix = sp.csr_matrix((weights, (rows, columns.ravel())), shape=(users, items))
    matrix.sum_duplicates()
    return matrix, group


def test_exact_search_returns_the_most_similar_other_users() -> None:
    vectors, _ = clustered_users(users=400)
    found = nearest_neighbours(vectors, 10, search="exact")
    unit = unit_rows(vectors)
    similarity = (unit @ unit.T).toarray()
    np.fill_diagonal(similarity, -np.inf)
    tenth_best = -np.sort(-similarity, axis=1)[:, 9]
    assert found.shape == (400, 10)
    assert (found != np.arange(400)[:, None]).all(), "a user is not their own neighbour"
    assert (similarity[np.arange(400)[:, None], found] >= tenth_best[:, None] - 1e-6).all()


def test_approximate_search_finds_users_of_the_same_taste_and_most_of_the_similarity() -> None:
    vectors, group = clustered_users()
    rows = np.arange(0, 3000, 7)
    exact = nearest_neighbours(vectors, 50, rows, search="exact")
    approximate = nearest_neighbours(vectors, 50, rows, search="approximate")
    assert approximate.shape == exact.shape and (approximate >= 0).all()
    assert (approximate != rows[:, None]).all()
    assert (group[approximate] == group[rows][:, None]).mean() >= 0.95
    unit = unit_rows(vectors)
    similarity = (unit[rows] @ unit.T).toarray()
    line = np.arange(rows.size)[:, None]
    assert similarity[line, approximate].sum() >= 0.9 * similarity[line, exact].sum()


def test_auto_search_is_exact_below_the_threshold_and_approximate_above() -> None:
    vectors, _ = clustered_users(users=600)
    exact = nearest_neighbours(vectors, 20, search="exact")
    assert (nearest_neighbours(vectors, 20, search="auto", exact_below=601) == exact).all()
    approximate = nearest_neighbours(vectors, 20, search="auto", exact_below=600, dimensions=16)
    assert (approximate == nearest_neighbours(vectors, 20, search="approximate", dimensions=16)).all()


def test_compact_users_keep_the_cosine_similarity_when_wide_enough() -> None:
    vectors, _ = clustered_users(users=200)
    unit = unit_rows(vectors)
    exact = (unit @ unit.T).toarray()
    full = compact_users(unit, 200)  # as many dimensions as users: nothing to lose
    assert full.shape == (200, 200) and full.dtype == np.float32
    assert np.allclose(np.linalg.norm(full, axis=1), 1, atol=1e-4)
    assert np.allclose(full @ full.T, exact, atol=1e-3)
    narrow = compact_users(unit, 20)
    assert narrow.shape == (200, 20)
    assert np.abs(narrow @ narrow.T - exact).mean() > np.abs(full @ full.T - exact).mean()


@pytest.mark.parametrize("block", [3, 4096])
def test_blended_top_matches_the_dense_blend_with_ties_by_item(block: int) -> None:
    rng = np.random.default_rng(1)
    vectors = sp.random(40, 30, density=0.2, format="csr", random_state=2, dtype=np.float32)
    vectors.data = np.round(vectors.data * 4) / 4 + 0.25  # coarse values: many ties
    neighbours = np.stack([rng.choice(np.delete(np.arange(40), u), 5, replace=False) for u in range(40)])
    neighbours[0, 3:] = -1  # a user with fewer neighbours
    ids, scores = blended_top(vectors, neighbours, 0.6, 8, block=block)
    dense = vectors.toarray()
    mean = np.stack([dense[row[row >= 0]].sum(axis=0) / 5 for row in neighbours])
    expected = 0.6 * dense + 0.4 * mean
    for user in range(40):
        order = np.lexsort((np.arange(30), -expected[user]))[:8]
        order = order[expected[user, order] > 0]
        assert ids[user, : order.size].tolist() == order.tolist()
        assert (ids[user, order.size :] == -1).all()
        assert np.allclose(scores[user, : order.size], expected[user, order], atol=1e-6)
    rows = np.array([5, 17])
    part, _ = blended_top(vectors, neighbours[rows], 0.6, 8, rows)
    assert (part == ids[rows]).all(), "scoring some users gives their rows of the whole"
    kept = as_sparse(ids, scores, (40, 30))
    assert kept.shape == (40, 30) and kept.nnz == int((ids >= 0).sum())
    some = as_sparse(*blended_top(vectors, neighbours[rows], 0.6, 8, rows), (40, 30), rows)
    assert some.shape == (40, 30) and some.getnnz(axis=1)[rows].sum() == some.nnz > 0
    np.testing.assert_array_equal(some[rows].toarray(), kept[rows].toarray())


def as_sparse(
    ids: np.ndarray, scores: np.ndarray, shape: tuple[int, int], rows: np.ndarray | None = None
) -> sp.csr_matrix:
    """Users × items matrix (``shape``) of :func:`blended_top`'s answer for ``rows`` (default:
    every user); the other users' rows are empty."""
    keep = ids >= 0
    owners = np.nonzero(keep)[0]
    return sp.csr_matrix((scores[keep], (owners if rows is None else rows[owners], ids[keep])), shape=shape)


@pytest.mark.parametrize(("search", "threads"), [("exact", 1), ("approximate", 1), ("approximate", 3)])
def test_searched_and_blended_a_block_at_a_time_gives_the_whole_answer(search: str, threads: int) -> None:
    vectors = sp.random(700, 90, density=0.05, format="csr", random_state=4, dtype=np.float32)
    vectors.data = np.round(vectors.data * 4) / 4 + 0.25  # coarse values: many ties
    prepared = NeighbourSearch(vectors, 15, search, dimensions=16)
    whole = nearest_neighbours(vectors, 15, search=search, dimensions=16)
    np.testing.assert_array_equal(prepared.neighbours(np.arange(700), block=64), whole)
    rows = np.array([0, 3, 4, 250, 251, 699])
    np.testing.assert_array_equal(prepared.neighbours(rows, block=4), whole[rows])
    for asked in (np.arange(700), rows):
        ids, scores = blended_top(vectors, whole[asked], 0.7, 12, asked)
        expected = BestFirstRows.ordered(as_sparse(ids, scores, vectors.shape, asked).tocsr())
        ranked = ranked_rows(vectors, prepared, 0.7, 12, asked, block=5, threads=threads)
        np.testing.assert_array_equal(ranked.starts, expected.starts)
        np.testing.assert_array_equal(ranked.ids, expected.ids)
        np.testing.assert_array_equal(ranked.scores, expected.scores)
        assert ranked.ids.size > 0 and (np.diff(ranked.starts)[np.setdiff1d(np.arange(700), asked)] == 0).all()


def no_repeat_log_of_the_1990s(users: int = 300, tastes: int = 6, seed: int = 3) -> pd.DataFrame:
    """Shoppers in 1994–95 with ids like ``cust-0007`` / ``sku/12``: three baskets each, never
    the same product twice, drawn from their taste's 40 products."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        taste = user % tastes
        products = rng.choice(40, size=15, replace=False) + 40 * taste
        for basket in range(3):
            when = pd.Timestamp("1994-11-01", tz="UTC") + pd.Timedelta(days=30 * basket + user % 9)
            rows += [(f"cust-{user:04d}", f"sku/{p}", when, f"b{user}-{basket}", 1) for p in products[basket * 5 :][:5]]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "basket_id", "quantity"])


def test_tifuknn_with_the_approximate_search_serves_the_users_taste_on_a_log_of_another_shape(tmp_path: Path) -> None:
    log = no_repeat_log_of_the_1990s()
    data = build_training_data(log)
    settings = {
        "neighbours_grid": [20],
        "group_decay_grid": [0.7],
        "alpha_grid": [0.5],
        "tune_users": 100,
        "approximate_neighbours": 12,
    }
    answers = {}
    for search in ("approximate", "exact"):
        generator = TifuKnnCandidates("tifuknn", TifuKnnCandidatesConfig(neighbour_search=search, **settings))
        directory = tmp_path / search
        directory.mkdir()
        params = generator.fit(data, directory)
        assert params["neighbour_search"] == search and params["tuning_users"] == 100
        assert params["neighbours"] == 20 and params["neighbours_blended"] == (12 if search == "approximate" else 20)
        generator.load(endcap.ModelContext(data.catalog, data.user_items, directory))
        answers[search] = generator
    user = int(np.flatnonzero(data.catalog.user_ids == "cust-0007")[0])
    query = endcap.Query(user_id="cust-0007", user_index=user, k=10)
    result = answers["approximate"].generate(query, endcap.UserFeatures(stats={}), 30)
    assert len(result) == 30
    taste = {f"sku/{p}" for p in range(40 * (7 % 6), 40 * (7 % 6) + 40)}
    assert set(data.catalog.item_ids[result.ids]) <= taste, "neighbours of the same taste propose its products"
    exact = answers["exact"].generate(query, endcap.UserFeatures(stats={}), 30)
    assert np.intersect1d(result.ids, exact.ids).size >= 20


@pytest.mark.parametrize("rows_at_once", [2, 1024])
def test_top_of_rows_keeps_each_rows_best_with_ties_by_column(rows_at_once: int) -> None:
    scores = sp.random(9, 40, density=0.5, format="csr", random_state=5, dtype=np.float32)
    scores.data = np.ceil(scores.data * 3) / 3  # three values: ties at every row's floor
    scores.sort_indices()
    owner, rank, item, score = top_of_rows(scores, 6, rows_at_once)
    dense = scores.toarray()
    for row in range(9):
        expected = np.lexsort((np.arange(40), -dense[row]))[:6]
        expected = expected[dense[row, expected] > 0]
        mine = owner == row
        assert item[mine].tolist() == expected.tolist() and rank[mine].tolist() == list(range(expected.size))
        np.testing.assert_array_equal(score[mine], dense[row, expected])


def test_top_of_rows_with_none_wanted_is_empty() -> None:
    scores = sp.random(4, 40, density=0.5, format="csr", random_state=5, dtype=np.float32)
    owner, rank, item, score = top_of_rows(scores, 0)
    assert owner.size == rank.size == item.size == score.size == 0


@pytest.mark.parametrize("probes", [1, 4])
def test_the_cell_search_finds_what_faiss_finds_in_the_same_cells(probes: int) -> None:
    """One matrix product per cell gives the neighbours faiss's own inverted-file search gives
    over the same cells (up to scores equal within rounding), best first, without the user
    itself; -1 where the cells hold fewer."""
    import faiss

    rng = np.random.default_rng(3)
    users = np.repeat(rng.standard_normal((10_000, 16)).astype(np.float32), 2, axis=0)  # twins: equal scores
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    index = inverted_file(users, probes)
    reference = faiss.IndexIVFFlat(index.quantizer, 16, index.starts.size - 1, faiss.METRIC_INNER_PRODUCT)
    reference.is_trained = True
    reference.add(users)
    reference.nprobe = probes
    rows = np.arange(0, 20_000, 37)
    k = 100  # more than one cell of about 70 users holds
    found = searched_neighbours(index, k, rows)
    _, theirs = reference.search(users[rows], k + 1)
    for row, mine, their in zip(rows, found, theirs, strict=True):
        expected = their[(their != row) & (their >= 0)][:k]
        assert (mine[: expected.size] >= 0).all() and (mine[expected.size :] == -1).all()
        mine_scores = users[mine[: expected.size]] @ users[row]
        assert (np.diff(mine_scores) <= 1e-6).all(), "best first"
        twins = np.flatnonzero(mine_scores[1:] == mine_scores[:-1])
        assert (mine[twins] < mine[twins + 1]).all(), "equal scores ordered by user index"
        # the same neighbours, up to the order of scores equal within float rounding
        np.testing.assert_allclose(mine_scores, np.sort(users[expected] @ users[row])[::-1], atol=1e-5)
    assert (found == -1).any() == (probes == 1), "one probed cell holds fewer than k users"
