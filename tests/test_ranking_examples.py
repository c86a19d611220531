"""The ranker's training data is point-in-time correct: nothing from the label basket leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import prepared_workspace
from endcap.config import EndcapConfig
from endcap.data.baskets import add_basket_index
from endcap.data.ingest import load_interactions
from endcap.data.training_data import build_training_data
from endcap.errors import FailedPrecondition
from endcap.features.tables import label_baskets
from endcap.plugin_host import PluginHost
from endcap.training.ranking_examples import build_ranking_examples
from endcap.workspace import Workspace


def test_features_are_read_as_of_before_each_label_basket(tmp_path: Path) -> None:
    config = EndcapConfig(training={"label_baskets": 3})
    workspace = prepared_workspace(tmp_path, host=PluginHost(config), users=16, items=30, baskets=6)
    log = load_interactions(workspace)
    # The offline store holds the serving snapshot too: the one that would leak the label basket.
    examples = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))

    indexed = add_basket_index(log)
    newest = indexed.groupby("user_id")["basket_index"].max()
    bounds = np.concatenate([[0], np.cumsum(examples.groups)])
    orders = examples.values[:, examples.names.index("user.orders")]
    times_bought = examples.values[:, examples.names.index("user_product.times_bought")]
    depth_of_group = pd.Series(examples.user_ids).groupby(pd.Series(examples.user_ids)).cumcount()
    for position, user_id in enumerate(examples.user_ids):
        rows = slice(bounds[position], bounds[position + 1])
        label_index = newest[user_id] - depth_of_group[position]  # depth 0 first, then one basket older each
        assert label_index >= 1
        assert (orders[rows] == label_index).all(), f"{user_id}: user.orders saw its label basket"
        history = indexed[(indexed["user_id"] == user_id) & (indexed["basket_index"] < label_index)]
        assert times_bought[rows].max() <= history.groupby("item_id").size().max()
        basket = indexed[(indexed["user_id"] == user_id) & (indexed["basket_index"] == label_index)]
        assert examples.labels[rows].sum() <= basket["item_id"].nunique()
    assert examples.labels.sum() > 0
    expected_groups = sum(int((newest >= depth + 1).sum()) for depth in range(3))
    assert len(examples.user_ids) == expected_groups and len(set(examples.user_ids)) == (newest >= 1).sum()
    # the serving snapshot, which includes the label baskets, really is in the offline store
    stats = pd.read_parquet(workspace.features / "user_stats.parquet")
    assert stats.groupby("user_id")["orders"].max().loc["u1"] == newest["u1"] + 1


def test_one_label_basket_per_user_is_the_newest(synthetic_workspace: Path) -> None:
    workspace = Workspace(synthetic_workspace)
    log = load_interactions(workspace)
    config = EndcapConfig()
    assert config.training.label_baskets == 1
    examples = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))
    labels = label_baskets(log).set_index("user_id")
    orders = examples.values[:, examples.names.index("user.orders")]
    bounds = np.concatenate([[0], np.cumsum(examples.groups)])
    assert len(examples.user_ids) == len(labels)
    for position, user_id in enumerate(examples.user_ids):
        assert (orders[bounds[position] : bounds[position + 1]] == labels.loc[user_id, "basket_index"]).all()


def test_a_store_built_for_fewer_label_baskets_is_refused(synthetic_workspace: Path) -> None:
    workspace = Workspace(synthetic_workspace)  # features built for one label basket per user
    log = load_interactions(workspace)
    config = EndcapConfig(training={"label_baskets": 3})
    with pytest.raises(FailedPrecondition, match="run 'endcap features' again"):
        build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))


def test_examples_prepared_a_block_at_a_time_equal_one_shopper_at_a_time(
    synthetic_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block-wise build (one candidate merge, one feature matrix per block of shoppers) gives
    the examples :meth:`Pipeline.prepare` gives shopper by shopper, which is what a block whose
    preparation fails falls back to."""
    import endcap.training.ranking_examples as ranking_examples

    workspace = Workspace(synthetic_workspace)
    log = load_interactions(workspace)
    config = EndcapConfig()
    blockwise = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("prepared one shopper at a time")

    monkeypatch.setattr(ranking_examples, "prepare_block", refuse)
    alone = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))
    assert blockwise.user_ids == alone.user_ids and blockwise.names == alone.names
    np.testing.assert_array_equal(blockwise.groups, alone.groups)
    np.testing.assert_array_equal(blockwise.labels, alone.labels)
    assert blockwise.labels.sum() > 0
    # ALS scores a block with one matrix product and a shopper with a matrix-vector product: the
    # same numbers up to float32 rounding
    np.testing.assert_allclose(blockwise.values, alone.values, rtol=1e-5, atol=1e-6)


def test_a_log_with_more_users_than_ranking_users_gives_examples_for_a_seeded_sample(synthetic_workspace: Path) -> None:
    workspace = Workspace(synthetic_workspace)
    log = load_interactions(workspace)
    config = EndcapConfig(training={"ranking_users": 7})
    first = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))
    again = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))
    assert len(set(first.user_ids)) == 7 < log["user_id"].nunique()
    assert first.user_ids == again.user_ids
    np.testing.assert_array_equal(first.values, again.values)


def test_the_training_snapshots_hold_the_sampled_users_and_training_asks_for_the_same(tmp_path: Path) -> None:
    config = EndcapConfig(training={"ranking_users": 7})
    workspace = prepared_workspace(tmp_path, host=PluginHost(config), users=20, items=30, baskets=5)
    log = load_interactions(workspace)
    stats = pd.read_parquet(workspace.features / "user_stats.parquet", columns=["user_id", "event_timestamp"])
    newest = stats["event_timestamp"] == stats["event_timestamp"].max()
    assert stats.loc[newest, "user_id"].nunique() == 20, "the serving snapshot holds everyone"
    assert stats.loc[~newest, "user_id"].nunique() == 7, "the training snapshots hold the sample only"
    examples = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log))
    assert set(examples.user_ids) == set(stats.loc[~newest, "user_id"])
    other = EndcapConfig(training={"ranking_users": 9})
    with pytest.raises(FailedPrecondition, match=r"7 of 20 users' rows.*asks for 9 of 20.*run 'endcap features' again"):
        build_ranking_examples(workspace, PluginHost(other), other, build_training_data(log))
