from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import pytest
from endcap.config import ComponentBlock, EndcapConfig
from endcap.errors import InvalidArgument, NotFound
from endcap.features.store import OnlineFeatures
from endcap.plugin_host import PluginHost
from endcap.serving.model import load_serving_model
from endcap.serving.pipeline import Pipeline
from endcap.serving.similar_items import SimilarItems
from endcap.workspace import Workspace


class FailingCandidates(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        raise RuntimeError("upstream timed out")


class OutOfRangeCandidates(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        return endcap.Candidates(np.array([10**6], dtype=np.int32), np.array([1.0], dtype=np.float32))


class SlowCandidates(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        time.sleep(0.02)
        return endcap.Candidates(np.array([0], dtype=np.int32), np.array([1.0], dtype=np.float32))


class BoostFirstItem(endcap.Filter):
    def keep(self, query: Any, ids: Any) -> Any:
        return np.ones(ids.size, dtype=bool)

    def boost(self, query: Any, ids: Any) -> Any:
        return np.where(ids == 0, 100.0, 0.0)


class FailingRanker(endcap.Ranker):
    def score(self, query: Any, features: Any) -> Any:
        raise ValueError("model file corrupt")


class TestComponents:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(FailingCandidates, type_name="failing")
        registry.add(OutOfRangeCandidates, type_name="out_of_range")
        registry.add(FailingRanker, type_name="failing_ranker")
        registry.add(SlowCandidates, type_name="slow")
        registry.add(BoostFirstItem, type_name="boost_first")


@pytest.fixture(scope="module")
def online(synthetic_workspace: Path) -> OnlineFeatures:
    return OnlineFeatures(Workspace(synthetic_workspace))


def make_pipeline(workspace: Path, online: OnlineFeatures, budgets: bool = True, **config: Any) -> Pipeline:
    settings = EndcapConfig(**config)
    host = PluginHost(settings, extra_plugins={"test": TestComponents()})
    model = load_serving_model(Workspace(workspace), host, online)
    return Pipeline(model, online.user, settings.serving, budgets=budgets)


@pytest.fixture(scope="module")
def pipeline(synthetic_workspace: Path, online: OnlineFeatures) -> Pipeline:
    return make_pipeline(synthetic_workspace, online)


def test_k_unique_items_best_first(pipeline: Pipeline) -> None:
    answer, record = pipeline.recommend(pipeline.make_query("u1", 10))
    assert len(answer.item_ids) == 10
    assert len(set(answer.item_ids)) == 10
    assert (np.diff(answer.scores) <= 1e-6).all()
    assert all(sources for sources in answer.sources)
    assert set(record.timings.ms) == {"user_features", "candidates", "merge", "filter", "features", "rank", "top_k"}
    assert record.candidates_per_source["repurchase"] > 0


def test_monitors_see_which_sources_proposed_each_item(pipeline: Pipeline) -> None:
    answer, record = pipeline.recommend(pipeline.make_query("u1", 10))
    assert record.item_sources == answer.sources and len(record.item_sources) == len(record.item_ids)
    named = {name for sources in record.item_sources for name in sources}
    assert named and all(record.candidates_per_source[name] > 0 for name in named)


def test_users_own_staples_come_back(pipeline: Pipeline, online: OnlineFeatures) -> None:
    history = online.user("u2")
    most_bought = max(zip(history["times_bought"], history["item_ids"], strict=True))[1]
    answer, _ = pipeline.recommend(pipeline.make_query("u2", 10))
    assert most_bought in answer.item_ids
    assert "repurchase" in answer.sources[answer.item_ids.index(most_bought)]


def test_excluded_items_never_come_back(pipeline: Pipeline) -> None:
    first, _ = pipeline.recommend(pipeline.make_query("u1", 5))
    cart = [*list(first.item_ids[:3]), "not-a-product"]
    answer, _ = pipeline.recommend(pipeline.make_query("u1", 5, exclude_item_ids=cart))
    assert len(answer.item_ids) == 5
    assert not set(cart) & set(answer.item_ids)


def test_unknown_user_gets_popular_items(pipeline: Pipeline) -> None:
    answer, record = pipeline.recommend(pipeline.make_query("stranger", 5))
    assert len(answer.item_ids) == 5
    assert all(sources == ("popularity",) for sources in answer.sources)
    assert record.query.user_index == -1


def test_k_larger_than_the_catalogue_returns_every_item_once(pipeline: Pipeline) -> None:
    answer, _ = pipeline.recommend(pipeline.make_query("u1", 1000))
    assert len(answer.item_ids) == len(set(answer.item_ids)) == pipeline.model.catalog.n_items


@pytest.mark.parametrize("k", [-1, 1001])
def test_k_out_of_range_is_invalid(pipeline: Pipeline, k: int) -> None:
    with pytest.raises(InvalidArgument, match="k must be between 1 and 1000"):
        pipeline.make_query("u1", k)


def test_k_zero_means_the_default(pipeline: Pipeline) -> None:
    assert pipeline.make_query("u1", 0).k == 10


def test_blank_user_is_invalid(pipeline: Pipeline) -> None:
    with pytest.raises(InvalidArgument, match="user_id is required"):
        pipeline.make_query("  ", 3)


def test_merge_scales_each_source_and_keeps_one_row_per_item(pipeline: Pipeline) -> None:
    sources = len(pipeline.source_names)
    assert sources >= 3
    results = [
        endcap.Candidates(np.array([5, 3, 9], np.int32), np.array([2.0, 4.0, 3.0], np.float32)),
        endcap.Candidates(np.array([3, 7], np.int32), np.array([1.0, 1.0], np.float32)),
    ] + [endcap.Candidates.empty()] * (sources - 2)
    ids, matrix = pipeline._merge(results)
    assert ids.tolist() == [3, 5, 7, 9]
    np.testing.assert_allclose(matrix[:, 0], [1.0, 0.05, 0.0, 0.525], rtol=1e-6)  # best 1, worst 0.05
    assert matrix[:, 1].tolist() == [1.0, 0.0, 1.0, 0.0], "a source whose scores are all equal counts fully"
    assert not matrix[:, 2:].any(), "a source that proposed nothing has an empty column"


def test_failing_sources_are_dropped_and_reported(synthetic_workspace: Path, online: OnlineFeatures) -> None:
    candidates = {
        "popularity": ComponentBlock(type="popularity"),
        "repurchase": ComponentBlock(type="repurchase"),
        "flaky": ComponentBlock(type="failing"),
        "buggy": ComponentBlock(type="out_of_range"),
    }
    pipeline = make_pipeline(synthetic_workspace, online, candidates=candidates)
    answer, record = pipeline.recommend(pipeline.make_query("u1", 10))
    assert len(answer.item_ids) == 10
    assert "upstream timed out" in record.errors["flaky"]
    assert "outside" in record.errors["buggy"]
    assert record.candidates_per_source["flaky"] == 0


def test_popularity_fallback_serves_when_every_source_is_empty(
    synthetic_workspace: Path, online: OnlineFeatures
) -> None:
    candidates = {"popularity": ComponentBlock(type="failing"), "flaky": ComponentBlock(type="failing")}
    pipeline = make_pipeline(synthetic_workspace, online, candidates=candidates)
    answer, record = pipeline.recommend(pipeline.make_query("u1", 4))
    assert answer.item_ids == ()  # the fallback itself failed: an empty answer, not an error
    assert "popularity (fallback)" in record.errors
    healthy = {"popularity": ComponentBlock(type="popularity"), "flaky": ComponentBlock(type="failing")}
    pipeline = make_pipeline(synthetic_workspace, online, candidates=healthy)
    answer, _ = pipeline.recommend(pipeline.make_query("u1", 4))
    assert len(answer.item_ids) == 4


def test_failing_ranker_falls_back_to_source_scores(synthetic_workspace: Path, online: OnlineFeatures) -> None:
    pipeline = make_pipeline(synthetic_workspace, online, ranker=ComponentBlock(type="failing_ranker"))
    answer, record = pipeline.recommend(pipeline.make_query("u1", 5))
    assert len(answer.item_ids) == 5
    assert "model file corrupt" in record.errors["ranker:ranker"]


def test_blocklist_filter_from_config(synthetic_workspace: Path, online: OnlineFeatures, pipeline: Pipeline) -> None:
    usual, _ = pipeline.recommend(pipeline.make_query("u1", 5))
    blocked = list(usual.item_ids[:2])
    filters = {"recalled": ComponentBlock(type="blocklist", item_ids=blocked)}
    answer, _ = make_pipeline(synthetic_workspace, online, filters=filters).recommend(pipeline.make_query("u1", 5))
    assert len(answer.item_ids) == 5
    assert not set(blocked) & set(answer.item_ids)


def test_similar_items(pipeline: Pipeline) -> None:
    similar = SimilarItems(pipeline.model, pipeline.serving, pipeline.calls)
    item_ids, scores = similar.answer("i0", 5, exclude_item_ids=["i1"])
    assert len(item_ids) == 5 and "i0" not in item_ids and "i1" not in item_ids
    assert scores.shape == (5,)
    with pytest.raises(NotFound, match="item 'nope' is not in the catalogue"):
        similar.answer("nope", 5)


def test_inputs_handed_to_components_are_read_only(pipeline: Pipeline) -> None:
    seen: list[endcap.FeatureMatrix] = []
    ranker = pipeline.model.components.ranker
    original = ranker.score

    def spy(query: Any, features: endcap.FeatureMatrix) -> Any:
        seen.append(features)
        return original(query, features)

    ranker.score = spy  # type: ignore[method-assign]
    try:
        pipeline.recommend(pipeline.make_query("u1", 3))
    finally:
        del ranker.score
    with pytest.raises(ValueError, match="read-only"):
        seen[0].values[0, 0] = 1.0


def test_a_source_over_its_budget_is_dropped_and_counted(synthetic_workspace: Path, online: OnlineFeatures) -> None:
    candidates = {
        "popularity": ComponentBlock(type="popularity"),
        "slow": ComponentBlock(type="slow", budget_ms=5),
    }
    pipeline = make_pipeline(synthetic_workspace, online, candidates=candidates)
    for _ in range(2):
        answer, record = pipeline.recommend(pipeline.make_query("u1", 5))
        assert len(answer.item_ids) == 5
        assert record.errors["slow"].startswith("over budget:") and "> 5 ms" in record.errors["slow"]
        assert record.candidates_per_source["slow"] == 0
    assert pipeline.failures["slow"] == 2
    relaxed = {**candidates, "slow": ComponentBlock(type="slow", budget_ms=1000)}
    _, record = make_pipeline(synthetic_workspace, online, candidates=relaxed).recommend(pipeline.make_query("u1", 5))
    assert "slow" not in record.errors and record.candidates_per_source["slow"] == 1


def test_batch_pipelines_keep_a_source_over_its_budget(synthetic_workspace: Path, online: OnlineFeatures) -> None:
    """Offline jobs must not give answers that depend on how busy the machine was."""
    candidates = {"popularity": ComponentBlock(type="popularity"), "slow": ComponentBlock(type="slow", budget_ms=5)}
    pipeline = make_pipeline(synthetic_workspace, online, budgets=False, candidates=candidates)
    _, record = pipeline.recommend(pipeline.make_query("u1", 5))
    assert "slow" not in record.errors and record.candidates_per_source["slow"] == 1
    assert pipeline.failures["slow"] == 0


def test_business_rule_boosts_move_items_up(synthetic_workspace: Path, online: OnlineFeatures) -> None:
    pipeline = make_pipeline(synthetic_workspace, online, filters={"promo": ComponentBlock(type="boost_first")})
    answer, _ = pipeline.recommend(pipeline.make_query("u1", 5))
    assert answer.item_ids[0] == pipeline.model.catalog.item_ids[0]
