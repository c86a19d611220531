"""``endcap evaluate --protocol random-holdout`` on a ratings-style log, and the ALS baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import run_cli
from endcap.data.ingest import ingest, load_interactions
from endcap.data.training_data import build_training_data
from endcap.evaluation.baselines import als_baseline, frequency_baselines
from endcap.evaluation.holdout import MIN_RANDOM_HOLDOUT_ITEMS, random_split
from endcap.evaluation.metrics import pad_rankings, ranking_metrics
from endcap.workspace import Workspace


def make_ratings_log(users: int = 60, items: int = 80, clusters: int = 4, per_user: int = 14, seed: int = 11):
    """A ratings-style log (``user_id,item_id,rating,timestamp``, Unix seconds): each user rates an
    item at most once, mostly items of their own cluster (users and items in ``clusters`` groups,
    so a latent-factor model can learn who likes what), on random days of 1997. The last user
    rates only three items: too few to be evaluated."""
    rng = np.random.default_rng(seed)
    start = 852_076_800  # 1997-01-01 UTC
    size = items // clusters
    weights = 1.0 / np.arange(1, size + 1) ** 0.7
    rows = []
    for user in range(users):
        own = np.arange(user % clusters * size, (user % clusters + 1) * size)
        count = 3 if user == users - 1 else per_user
        mine = round(count * 0.85)
        chosen = list(rng.choice(own, size=mine, replace=False, p=weights / weights.sum()))
        chosen += list(rng.choice(np.setdiff1d(np.arange(items), own), size=count - mine, replace=False))
        for j, item in enumerate(chosen):
            when = start + int(rng.integers(0, 365)) * 86_400 + user * 37 + j
            rows.append((f"u{user}", f"m{item}", int(rng.integers(1, 6)), when))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


@pytest.fixture(scope="module")
def ratings(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("ratings")
    make_ratings_log().to_csv(root / "log.csv", index=False)
    workspace = Workspace.resolve(root / "ws")
    ingest(root / "log.csv", workspace)
    return load_interactions(workspace)


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True))


def test_random_split_is_seeded_disjoint_and_a_quarter_of_each_users_items(ratings: pd.DataFrame) -> None:
    test, validation = random_split(ratings, "test", seed=5), random_split(ratings, "validation", seed=5)
    assert pairs(test.target) == pairs(random_split(ratings, "test", seed=5).target)
    assert pairs(test.target) != pairs(random_split(ratings, "test", seed=6).target)
    assert test.fingerprint() == random_split(ratings, "test", seed=5).fingerprint() != validation.fingerprint()
    assert not pairs(test.target) & pairs(validation.target)
    assert not pairs(test.target) & pairs(test.training)  # every line of a held-out item is held out
    assert not (pairs(test.target) | pairs(validation.target)) & pairs(validation.training)
    assert pairs(validation.target) <= pairs(test.training)
    held = test.target.groupby("user_id")["item_id"].nunique()
    assert set(held) == {4}  # round(25 % of 14)
    small = "u59"  # three items: trains, is not evaluated
    assert small not in set(test.target["user_id"]) and small in set(test.training["user_id"])
    assert len(held) == 59 and MIN_RANDOM_HOLDOUT_ITEMS == 4


def test_als_baseline_learns_the_clusters_and_leaves_out_purchased_items(ratings: pd.DataFrame) -> None:
    split = random_split(ratings, "test")
    data = build_training_data(split.training)
    users = sorted(split.target["user_id"].unique())
    rows = pd.Index(data.catalog.user_ids).get_indexer(users)
    columns = pd.Index(data.catalog.item_ids).get_indexer(split.target["item_id"])
    user_rows = {u: i for i, u in enumerate(users)}
    truth = sp.csr_matrix(
        (np.ones(len(columns)), ([user_rows[u] for u in split.target["user_id"]], columns)),
        shape=(len(users), data.catalog.n_items),
    )
    als = als_baseline(data, users, 20, exclude_purchased=True)
    g_top, p_top = frequency_baselines(data, users, 20, exclude_purchased=True)
    for row, recommended in zip(rows, als, strict=True):
        assert recommended.size == 20 and not np.isin(recommended, data.user_items[row].indices).any()
    for row, top in zip(rows, p_top, strict=True):
        assert not np.isin(top, data.user_items[row].indices).any()
    als_ndcg = ranking_metrics(pad_rankings(als, 20), truth)["ndcg@10"]
    popular_ndcg = ranking_metrics(pad_rankings(g_top, 20), truth)["ndcg@10"]
    assert als_ndcg > popular_ndcg + 0.05
    kept = als_baseline(data, users, 20, exclude_purchased=False)
    assert any(np.isin(top, data.user_items[row].indices).any() for row, top in zip(rows, kept, strict=True))


def test_evaluate_random_holdout_through_the_cli(tmp_path: Path) -> None:
    make_ratings_log().to_csv(tmp_path / "ratings.csv", index=False)
    ingested = run_cli("ingest", str(tmp_path / "ratings.csv"), workspace=tmp_path / "ws")
    assert "rating" in ingested.stdout  # the ignored column is named
    out = tmp_path / "report"
    run_cli("evaluate", "--protocol", "random-holdout", "--seed", "7", "--out", str(out), workspace=tmp_path / "ws")
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"] == "random-holdout" and report["seed"] == 7
    assert [t["name"] for t in report["targets"]] == ["validation", "test"]
    for target in report["targets"]:
        assert target["users"] == 59 and target["protocol"] == "random-holdout" and target["seed"] == 7
        assert {"G-TopFreq", "P-TopFreq", "ALS", "pipeline", "als alone"} <= set(target["systems"])
        manifest = json.loads(
            (
                tmp_path / "ws" / "evaluation" / target["name"] / "models" / target["model_version"] / "manifest.json"
            ).read_text()
        )
        assert target["exclude_purchased"] is manifest["exclude_purchased"] is True  # nothing repeats in ratings
        assert target["repeat_share"] == manifest["repeat_share"]
        for system in target["systems"].values():
            metrics = system["metrics"]
            assert metrics["users"] == 59 and 0.0 <= metrics["ndcg@10"] <= 1.0
            assert 0.0 <= metrics["recall@10"] <= metrics["recall@20"] <= 1.0
            if target["exclude_purchased"]:
                assert metrics["recall_repeat@20"] == 0.0  # nothing the user has is ever ranked
        als, popular = target["systems"]["ALS"]["metrics"], target["systems"]["G-TopFreq"]["metrics"]
        assert als["recall@20"] > 0.0
        assert als["ndcg@10"] > popular["ndcg@10"]
        pipeline = target["systems"]["pipeline"]["metrics"]
        assert pipeline["ndcg@10"] >= als["ndcg@10"], (target["name"], pipeline["ndcg@10"], als["ndcg@10"])
        assert "per_user" not in target and "user_ids" not in target
    text = (out / "report.md").read_text()
    assert "Protocol: `random-holdout`. Seed 7." in text and "| ALS |" in text
    assert "## Test target — 59 users" in text and "exclude_purchased:" in text
