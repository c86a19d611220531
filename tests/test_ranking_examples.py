"""The ranker's training data is point-in-time correct: nothing from the label basket leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from endcap.config import EndcapConfig
from endcap.data.baskets import add_basket_index
from endcap.data.ingest import load_interactions
from endcap.data.training_data import build_training_data
from endcap.features.tables import label_baskets
from endcap.plugin_host import PluginHost
from endcap.training.ranking_examples import build_ranking_examples
from endcap.workspace import Workspace


def test_features_are_read_as_of_before_the_label_basket(synthetic_workspace: Path) -> None:
    workspace = Workspace(synthetic_workspace)
    log = load_interactions(workspace)
    # The offline store holds the serving snapshot too: the one that would leak the label basket.
    config = EndcapConfig()
    examples = build_ranking_examples(workspace, PluginHost(config), config, build_training_data(log), log)

    labels = label_baskets(log).set_index("user_id")
    indexed = add_basket_index(log)
    bounds = np.concatenate([[0], np.cumsum(examples.groups)])
    orders = examples.values[:, examples.names.index("user.orders")]
    times_bought = examples.values[:, examples.names.index("user_product.times_bought")]
    item_ids = {}
    for position, user_id in enumerate(examples.user_ids):
        rows = slice(bounds[position], bounds[position + 1])
        label_index = labels.loc[user_id, "basket_index"]
        assert (orders[rows] == label_index).all(), f"{user_id}: user.orders saw the label basket"
        history = indexed[(indexed["user_id"] == user_id) & (indexed["basket_index"] < label_index)]
        item_ids[user_id] = history.groupby("item_id").size()
        assert times_bought[rows].max() <= item_ids[user_id].max()
    assert examples.labels.sum() > 0
    assert len(examples.user_ids) == len(labels)
    # the serving snapshot, which includes the label baskets, really is in the offline store
    stats = pd.read_parquet(workspace.features / "user_stats.parquet")
    assert stats.groupby("user_id")["orders"].max().loc["u1"] == labels.loc["u1", "basket_index"] + 1
