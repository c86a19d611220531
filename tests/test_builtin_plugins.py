from __future__ import annotations

from pathlib import Path

import endcap
import numpy as np
import pandas as pd
import pytest
from conftest import make_generic_log
from endcap.data.ingest import read_purchase_log
from endcap.data.training_data import build_training_data
from endcap.model_versions import load_catalog, save_catalog
from endcap.plugins.als import AlsCandidates, AlsCandidatesConfig
from endcap.plugins.blocklist import BlocklistFilter, BlocklistFilterConfig
from endcap.plugins.item2item import ItemToItemCandidates, ItemToItemCandidatesConfig
from endcap.plugins.lightgbm_ranker import LightGbmRanker, LightGbmRankerConfig
from endcap.plugins.linear_ranker import LinearRanker, LinearRankerConfig
from endcap.plugins.popularity import PopularityCandidates, PopularityCandidatesConfig
from endcap.plugins.repurchase import RepurchaseCandidates, RepurchaseCandidatesConfig
from endcap.plugins.structlog_monitor import StructlogMonitor, StructlogMonitorConfig
from endcap.plugins.tifuknn import TifuKnnCandidates, TifuKnnCandidatesConfig, personal_vectors
from endcap.types import Query, StageTimings, UserFeatures
from structlog.testing import capture_logs

NO_USER = UserFeatures(stats={})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> endcap.TrainingData:
    path = tmp_path_factory.mktemp("log") / "log.csv"
    make_generic_log().to_csv(path, index=False)
    frame, _ = read_purchase_log(path)
    return build_training_data(frame)


def fitted(component: endcap.Component, data: endcap.TrainingData, tmp_path: Path) -> endcap.Component:
    """Fit, then load into a fresh instance from what was saved (as serving does)."""
    component.fit(data, tmp_path)
    save_catalog(tmp_path, data.catalog, data.user_items)
    catalog, user_items = load_catalog(tmp_path)
    fresh = type(component)(component.name, component.config)
    fresh.load(endcap.ModelContext(catalog, user_items, tmp_path))
    return fresh


def query_for(data: endcap.TrainingData, user_id: str, k: int = 10) -> Query:
    known = np.flatnonzero(data.catalog.user_ids == user_id)
    return Query(user_id=user_id, user_index=int(known[0]) if known.size else -1, k=k)


def assert_well_formed(result: endcap.Candidates, n: int, n_items: int) -> None:
    assert len(result) <= n
    assert result.ids.dtype == np.int32 and result.scores.dtype == np.float32
    assert np.unique(result.ids).size == len(result)
    assert ((result.ids >= 0) & (result.ids < n_items)).all()
    assert (np.diff(result.scores) <= 1e-6).all(), "scores must come best first"


def test_popularity_ranks_by_purchase_count(data: endcap.TrainingData, tmp_path: Path) -> None:
    generator = fitted(PopularityCandidates("popularity", PopularityCandidatesConfig()), data, tmp_path)
    result = generator.generate(query_for(data, "nobody"), NO_USER, 5)
    counts = np.bincount(data.interactions["item_index"], minlength=data.catalog.n_items)
    assert result.ids.tolist() == np.argsort(-counts, kind="stable")[:5].tolist()
    assert_well_formed(result, 5, data.catalog.n_items)


def test_repurchase_prefers_recent_frequent_purchases(tmp_path: Path) -> None:
    rows = [("a", "old", f"2024-01-0{d}") for d in (1, 2, 3)] + [("a", "new", "2024-01-09"), ("a", "x", "2024-01-09")]
    rows += [("a", "x", f"2024-01-0{d}") for d in (4, 5, 6, 7, 8)]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    data = build_training_data(read_purchase_log(path)[0])
    generator = fitted(
        RepurchaseCandidates("repurchase", RepurchaseCandidatesConfig(half_life_orders=1)), data, tmp_path
    )
    result = generator.generate(query_for(data, "a"), NO_USER, 10)
    assert data.catalog.item_ids[result.ids].tolist() == ["x", "new", "old"]
    assert len(generator.generate(query_for(data, "b"), NO_USER, 10)) == 0


def test_als_recommends_and_folds_in_users_it_has_not_seen(data: endcap.TrainingData, tmp_path: Path) -> None:
    generator = fitted(AlsCandidates("als", AlsCandidatesConfig(factors=8, iterations=5)), data, tmp_path)
    result = generator.generate(query_for(data, "u3"), NO_USER, 20)
    assert len(result) == 20
    assert_well_formed(result, 20, data.catalog.n_items)
    history = UserFeatures(
        stats={"orders": 2.0},
        items=np.array([0, 1, 2], dtype=np.int32),
        item_stats={"times_bought": np.array([2, 1, 1], dtype=np.float32)},
    )
    folded = generator.generate(query_for(data, "newcomer"), history, 10)
    assert len(folded) == 10
    assert len(generator.generate(query_for(data, "newcomer"), NO_USER, 10)) == 0
    similar = generator.similar(0, 5)
    assert len(similar) == 5 and (np.diff(similar.scores) <= 0).all()  # five neighbours, best first
    assert 0 not in similar.ids and len(similar) == 5


def test_item2item_neighbours_are_co_purchased(data: endcap.TrainingData, tmp_path: Path) -> None:
    generator = fitted(ItemToItemCandidates("item2item", ItemToItemCandidatesConfig(neighbours=10)), data, tmp_path)
    similar = generator.similar(0, 5)
    assert 0 not in similar.ids
    co_bought = data.user_items[:, 0].T @ data.user_items
    assert all(co_bought[0, i] > 0 for i in similar.ids)
    result = generator.generate(query_for(data, "u3"), NO_USER, 15)
    assert_well_formed(result, 15, data.catalog.n_items)
    assert len(result) > 0


def test_linear_ranker_weighs_named_features_and_ignores_others() -> None:
    ranker = LinearRanker("ranker", LinearRankerConfig(weights={"source.a": 1.0, "product.purchases": -1.0}))
    features = endcap.FeatureMatrix(
        ids=np.array([5, 6, 7], dtype=np.int32),
        names=("source.a", "product.purchases", "unweighted"),
        values=np.array([[1.0, 0.0, 0.0], [0.5, 0.0, 100.0], [1.0, 9.0, 0.0]], dtype=np.float32),
    )
    scores = ranker.score(Query("u", 0, 3), features)
    assert scores.shape == (3,)
    assert scores[0] > max(scores[1], scores[2])  # row 1's large unweighted value does not count


def test_blocklist_drops_listed_items_only(data: endcap.TrainingData, tmp_path: Path) -> None:
    rule = BlocklistFilter("recalled", BlocklistFilterConfig(item_ids=["i1", "not-in-catalog"]))
    rule.load(endcap.ModelContext(data.catalog, data.user_items, tmp_path))
    ids = np.array([0, 1, 2], dtype=np.int32)
    blocked = int(np.flatnonzero(data.catalog.item_ids == "i1")[0])
    assert rule.keep(Query("u", 0, 3), ids).tolist() == [i != blocked for i in ids]


def test_structlog_monitor_writes_one_line_per_request() -> None:
    record = endcap.RequestRecord(
        request_id="r1",
        query=Query("u1", 0, 2),
        model_version="v1",
        candidates_per_source={"als": 30},
        item_ids=("i1", "i2"),
        scores=np.array([1.0, 0.5], dtype=np.float32),
        timings=StageTimings({"rank": 0.25}),
    )
    with capture_logs() as logs:
        StructlogMonitor("log", StructlogMonitorConfig()).on_request(record)
        StructlogMonitor("quiet", StructlogMonitorConfig(sample_rate=0.0)).on_request(record)
    assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "recommend"
    assert line["request_id"] == "r1" and line["k"] == 2
    assert "user_id" not in line and len(line["user_key"]) == 16  # pseudonymous unless enabled
    assert line["candidates"] == {"als": 30} and line["stage_ms"] == {"rank": 0.25}
    assert line["model_version"] == "v1"
    assert "items" not in line
    with capture_logs() as logs:
        StructlogMonitor("log", StructlogMonitorConfig(include_user_id=True, include_items=True)).on_request(record)
    assert logs[0]["user_id"] == "u1" and logs[0]["items"] == ["i1", "i2"]


def test_tifuknn_tunes_on_held_out_baskets_and_ranks_best_first(data: endcap.TrainingData, tmp_path: Path) -> None:
    config = TifuKnnCandidatesConfig(group_decay_grid=[0.5, 1.0], neighbours_grid=[5], alpha_grid=[0.5, 1.0])
    generator = TifuKnnCandidates("tifuknn", config)
    params = generator.fit(data, tmp_path)
    assert params["group_decay"] in (0.5, 1.0) and params["alpha"] in (0.5, 1.0) and params["neighbours"] == 5
    assert 0 < params["tuning_ndcg@10"] <= 1
    fresh = fitted(generator, data, tmp_path)
    result = fresh.generate(query_for(data, "u3"), NO_USER, 10)
    assert len(result) == 10
    assert_well_formed(result, 10, data.catalog.n_items)
    own = set(data.user_items[query_for(data, "u3").user_index].indices)
    assert set(result.ids[:3]) <= own, "the user's own frequent items lead"
    assert len(fresh.generate(query_for(data, "nobody"), NO_USER, 10)) == 0


def test_tifuknn_personal_vectors_decay_with_age() -> None:
    frame = pd.DataFrame(
        {"user_index": [0, 0, 0], "item_index": [0, 1, 1], "basket_index": [0, 1, 2]}
    )  # item 1 in the two newest baskets, item 0 only in the oldest
    config = TifuKnnCandidatesConfig(group_size=2, within_decay=0.5, tune=False)
    vectors = personal_vectors(frame, (1, 2), config, group_decay=0.5).toarray()[0]
    # baskets by age: 0 (newest, group 0), 1 (group 0), 2 (oldest, group 1 alone)
    group0 = (1.0 * 1 + 0.5 * 1) / 1.5  # item 1 is in both baskets of the newest group
    assert vectors[1] == pytest.approx(group0 / 2)
    assert vectors[0] == pytest.approx(0.5 * 1.0 / 2)


def test_lightgbm_ranker_learns_from_ranking_examples(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = np.full(60, 20, dtype=np.int32)
    signal = rng.random(groups.sum()).astype(np.float32)
    noise = rng.random(groups.sum()).astype(np.float32)
    labels = (signal + 0.1 * rng.random(groups.sum()) > 0.85).astype(np.float32)
    examples = endcap.RankingExamples(
        names=("source.a", "product.noise"),
        values=np.column_stack([signal, noise]),
        labels=labels,
        groups=groups,
        user_ids=tuple(f"u{i}" for i in range(60)),
    )
    ranker = LightGbmRanker("ranker", LightGbmRankerConfig(rounds=50))
    data = endcap.TrainingData(
        catalog=endcap.Catalog(np.array(["u"]), np.array(["i"])),
        interactions=pd.DataFrame(),
        user_items=None,  # type: ignore[arg-type]
        ranking_examples=examples,
    )
    params = ranker.fit(data, tmp_path)
    assert next(iter(params["top_features_by_gain"])) == "source.a"
    ranker.load(endcap.ModelContext(data.catalog, None, tmp_path))  # type: ignore[arg-type]
    served = endcap.FeatureMatrix(  # served columns may come in another order
        ids=np.arange(3, dtype=np.int32),
        names=("product.noise", "extra", "source.a"),
        values=np.array([[0.5, 9, 0.95], [0.5, 9, 0.5], [0.5, 9, 0.05]], dtype=np.float32),
    )
    scores = ranker.score(Query("u", 0, 3), served)
    assert scores[0] > max(scores[1], scores[2])
    # the compiled trees score as LightGBM itself does, for a request's worth of candidates
    many = np.column_stack([noise, np.zeros_like(noise), signal])[:300]
    compiled = ranker.score(Query("u", 0, 10), endcap.FeatureMatrix(np.arange(300, dtype=np.int32), served.names, many))
    np.testing.assert_allclose(compiled, ranker.booster.predict(many[:, [2, 0]]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"features \['source.a'\] the model was trained with are not served"):
        ranker.score(Query("u", 0, 3), endcap.FeatureMatrix(served.ids, ("product.noise",), served.values[:, :1]))


def test_als_answers_a_prefetched_block_exactly_as_one_user_at_a_time(
    data: endcap.TrainingData, tmp_path: Path
) -> None:
    blocked = fitted(AlsCandidates("als", AlsCandidatesConfig()), data, tmp_path)
    one_by_one = AlsCandidates("als", AlsCandidatesConfig(memo_users=0))
    one_by_one.load(endcap.ModelContext(*load_catalog(tmp_path), tmp_path))
    users = np.arange(min(8, data.catalog.n_users), dtype=np.int32)
    blocked.prefetch(users, 15)
    for user_index in users.tolist():
        query = Query(user_id=str(data.catalog.user_ids[user_index]), user_index=user_index, k=10)
        expected = one_by_one.generate(query, UserFeatures(stats={}), 15)
        got = blocked.generate(query, UserFeatures(stats={}), 15)
        assert not got.ids.flags.writeable  # served from the memo, shared read-only
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)


def test_als_folds_in_a_new_user_like_the_same_history_seen_in_training(
    data: endcap.TrainingData, tmp_path: Path
) -> None:
    """A new user's row is weighted with the training matrix's BM25 statistics: a newcomer who
    bought what u3 bought gets u3's candidates (weighting the one row on its own would not)."""
    generator = fitted(AlsCandidates("als", AlsCandidatesConfig()), data, tmp_path)
    known = generator.generate(query_for(data, "u3"), NO_USER, 20)
    u3 = int(np.flatnonzero(data.catalog.user_ids == "u3")[0])
    row = data.user_items[u3]
    history = UserFeatures(
        stats={"orders": 5.0}, items=row.indices.astype(np.int32), item_stats={"times_bought": row.data}
    )
    folded = generator.generate(query_for(data, "newcomer"), history, 20)
    assert len(set(folded.ids.tolist()) & set(known.ids.tolist())) >= 15


def test_best_first_rows_load_what_was_saved_and_versions_saved_before(tmp_path: Path) -> None:
    """Repurchase and TIFU-KNN save their rows ordered at fit and load them memory-mapped; model
    versions saved before (the arrays in one ``ranked.npz``, or a ``scores.npz`` matrix ordered
    at load) still load to the same rows."""
    import scipy.sparse as sp
    from endcap.plugins._shared import BestFirstRows

    rng = np.random.default_rng(4)
    matrix = sp.random(30, 50, density=0.2, format="csr", random_state=4, dtype=np.float32)
    matrix.data = np.round(rng.random(matrix.nnz) * 4 + 0.5).astype(np.float32)  # ties, broken by position
    (tmp_path / "new").mkdir()
    BestFirstRows.ordered(matrix).save(tmp_path / "new")
    (tmp_path / "old").mkdir()
    sp.save_npz(tmp_path / "old" / "scores.npz", matrix)
    (tmp_path / "npz").mkdir()
    saved = BestFirstRows.ordered(matrix)
    np.savez(tmp_path / "npz" / "ranked.npz", starts=saved.starts, ids=saved.ids, scores=saved.scores)
    new, old = BestFirstRows.load(tmp_path / "new"), BestFirstRows.load(tmp_path / "old")
    npz = BestFirstRows.load(tmp_path / "npz")
    assert all(isinstance(array, np.memmap) for array in (new.starts, new.ids, new.scores))
    for user in range(30):
        top, before, one_file = new.top(user, 8), old.top(user, 8), npz.top(user, 8)
        assert np.array_equal(top.ids, before.ids) and np.array_equal(top.scores, before.scores)
        assert np.array_equal(top.ids, one_file.ids) and np.array_equal(top.scores, one_file.scores)
        row = matrix[user].toarray()[0]
        expected = np.lexsort((np.arange(50), -row))[: len(top)]
        assert top.ids.tolist() == expected.tolist(), "best first, equal scores by item index"
