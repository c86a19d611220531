"""Any purchase log, of any age and domain, gets personal answers: the whole path (ingest,
features, train, serve) through the real CLI and a real server, on logs of three shapes
generated here, none dated near today:

(a) ratings-style: each item at most once per user, Unix seconds from 1997, a rating column;
(b) grocery-style with heavy repeats: a slice of the demo, moved 30 years back;
(c) sparse-repeat retail (about 10 % repeats), ISO 8601 with mixed zones, five years ahead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from conftest import RunningServer, log_events, run_cli, start_server, stop_server
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


def ratings_log(users: int = 150, items: int = 300, seed: int = 3) -> pd.DataFrame:
    """Users and films in clusters (a user mostly rates their cluster's films), each film rated
    at most once per user, over a few months of 1997–98."""
    rng = np.random.default_rng(seed)
    clusters = 6
    user_cluster, item_cluster = rng.integers(0, clusters, users), rng.integers(0, clusters, items)
    appeal = rng.pareto(1.5, items).clip(0, 20) + 0.05
    start = int(pd.Timestamp("1997-09-20", tz="UTC").timestamp())
    rows = []
    for user in range(users):
        weights = np.where(item_cluster == user_cluster[user], 8.0, 1.0) * appeal
        films = rng.choice(items, int(rng.integers(20, 50)), replace=False, p=weights / weights.sum())
        first = start + int(rng.integers(0, 120 * 86400))
        times = first + np.sort(rng.integers(0, 60 * 86400, films.size))
        rows += [
            (f"user-{user}", f"film-{f}", int(rng.integers(1, 6)), int(t)) for f, t in zip(films, times, strict=True)
        ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def shifted_demo_log(users: int = 120, years: int = -30) -> pd.DataFrame:
    """The first ``users`` shoppers of the Instacart sample, every time moved ``years``."""
    from endcap.data.demo import instacart_sample
    from endcap.data.ingest import read_purchase_log

    frame, _ = read_purchase_log(instacart_sample(), "instacart")
    kept = frame[frame["user_id"].isin(sorted(frame["user_id"].unique())[:users])]
    moved = kept["timestamp"] + pd.DateOffset(years=years)
    return pd.DataFrame(
        {"user_id": kept["user_id"], "item_id": kept["item_id"], "timestamp": moved.dt.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )


def retail_log(users: int = 150, items: int = 400, seed: int = 5) -> pd.DataFrame:
    """Shoppers buying one to three things a visit, about one purchase in ten a repeat, dated
    five years ahead of today, with times written in three zones."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 8, items)
    start = pd.Timestamp("2031-03-01", tz="UTC")
    zones = ["+02:00", "-05:00", "Z"]
    rows = []
    for user in range(users):
        taste = rng.integers(0, 8)
        bought: list[int] = []
        for visit in range(int(rng.integers(4, 9))):
            when = start + pd.Timedelta(days=int(11 * visit + rng.integers(0, 7)), hours=int(rng.integers(8, 20)))
            for _ in range(int(rng.integers(1, 4))):
                if bought and rng.random() < 0.1:
                    item = int(rng.choice(bought))
                else:
                    pool = np.flatnonzero(groups == taste) if rng.random() < 0.7 else np.arange(items)
                    item = int(rng.choice(pool))
                bought.append(item)
                zone = zones[(user + visit) % 3]
                local = when.tz_convert(zone.replace("Z", "+00:00")) if zone != "Z" else when
                stamp = local.strftime("%Y-%m-%dT%H:%M:%S") + (zone if zone != "Z" else "Z")
                rows.append((f"C{user:05d}", f"SKU-{item:04d}", stamp))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@dataclass(frozen=True)
class Built:
    shape: str
    workspace: Path
    log: pd.DataFrame
    """The log as written (the ids as the shop has them)."""
    train_output: str


def build(shape: str, root: Path, log: pd.DataFrame) -> Built:
    path = root / "log.csv"
    log.to_csv(path, index=False)
    workspace = root / "ws"
    run_cli("ingest", str(path), workspace=workspace)
    run_cli("features", workspace=workspace)
    trained = run_cli("train", workspace=workspace)
    return Built(shape, workspace, log, trained.stdout)


LOGS = {"ratings": ratings_log, "shifted_demo": shifted_demo_log, "retail": retail_log}


@pytest.fixture(scope="module", params=sorted(LOGS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(request.param, tmp_path_factory.mktemp(request.param), LOGS[request.param]())


@pytest.fixture(scope="module")
def served(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(built.workspace, tmp_path_factory.mktemp("logs"))
    yield server
    assert stop_server(server) == 0


def test_the_online_store_holds_every_user_of_the_log(built: Built) -> None:
    from endcap.features.store import open_store
    from endcap.workspace import Workspace

    users = sorted(built.log["user_id"].astype(str).unique())
    rows = [{"user_id": user} for user in users]
    stored = open_store(Workspace(built.workspace)).get_online_features(["user_stats:orders"], rows).to_dict()
    missing = [user for user, orders in zip(users, stored["orders"], strict=True) if orders is None]
    assert not missing, f"{len(missing)} of {len(users)} users have no online row, e.g. {missing[:3]}"


def test_train_reports_the_repeat_share_and_its_choice(built: Built) -> None:
    found = re.search(
        r"repeat purchases: ([\d.]+)% of the log's lines; already-bought items are (\w+)", built.train_output
    )
    assert found, built.train_output
    share, choice = float(found.group(1)) / 100, found.group(2)
    name = built.shape
    expected = {"ratings": (0.0, 0.0, "left"), "shifted_demo": (0.5, 0.8, "kept"), "retail": (0.05, 0.2, "kept")}
    low, high, decided = expected[name]
    assert low <= share <= high and choice == decided, (name, share, choice)


def _answers(target: str, users: list[str], k: int = 10) -> dict[str, list[pb.RecommendedItem]]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        return {user: list(stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=10).items) for user in users}


def _ids(items: list[pb.RecommendedItem]) -> list[str]:
    return [item.item_id for item in items]


def test_known_users_get_personal_answers_not_the_popularity_list(built: Built, served: RunningServer) -> None:
    users = sorted(built.log["user_id"].astype(str).unique())[:40]
    answers = _answers(served.target, [*users, "a-shopper-nobody-has-seen"])
    popular = _ids(answers.pop("a-shopper-nobody-has-seen"))
    assert all(len(items) == 10 for items in answers.values())
    personal = [user for user, items in answers.items() if _ids(items) != popular]
    assert len(personal) >= 0.9 * len(users), f"only {len(personal)} of {len(users)} answers differ from popularity"
    from_history = [  # proposed by a source that reads the user's own purchases, not popularity alone
        user for user, items in answers.items() if any(set(item.sources) - {"popularity"} for item in items)
    ]
    assert len(from_history) == len(users), f"{len(users) - len(from_history)} answers came from popularity alone"
    lines = [e for e in log_events(served.stderr_path.read_text()) if e.get("event") == "recommend"]
    assert sum(1 for e in lines if e.get("cold_start")) <= 1  # the stranger alone
    assert not any(e.get("online_miss") for e in lines)


def test_model_info_reports_the_repeat_decision(built: Built, served: RunningServer) -> None:
    with grpc.insecure_channel(served.target) as channel:
        info = pb_grpc.RecommendationServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.exclude_purchased == ("left out of answers" in built.train_output)
    assert f"{info.repeat_share:.1%}" in built.train_output


def test_already_bought_items_come_back_only_where_the_log_repeats(built: Built, served: RunningServer) -> None:
    users = sorted(built.log["user_id"].astype(str).unique())
    seen = built.log.groupby("user_id")["item_id"].agg(lambda items: set(items.astype(str)))
    answers = {user: set(_ids(items)) for user, items in _answers(served.target, users, k=20).items()}
    repeated = {user: items & seen[user] for user, items in answers.items() if items & seen[user]}
    if "left out of answers" in built.train_output:
        assert not repeated, f"{len(repeated)} users were offered what they had had, e.g. {list(repeated.items())[:2]}"
    else:
        assert repeated, "no answer holds anything the user bought before, in a log where people buy again"


def _batch_pipeline(workspace: Path, users: object = None) -> object:
    """The pipeline ``endcap batch`` runs, on this workspace's current model."""
    from endcap.config import load_config
    from endcap.features.store import OnlineFeatures
    from endcap.plugin_host import PluginHost
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline
    from endcap.workspace import Workspace

    space = Workspace(workspace)
    config = load_config(space.root)
    online = OnlineFeatures(space, config.feature_store)
    model = load_serving_model(space, PluginHost(config), online)
    read_users = online.users if users is None else None  # a block's rows in one read, as batch jobs do
    return Pipeline(model, online.user, config.serving, budgets=False, users=users, read_users=read_users)  # type: ignore[arg-type]


def _same_as_each_request(pipeline: object, block: list[str], k: int) -> int:
    """Answer ``block`` with the block engine, check every user against the request pipeline
    (asked right after, so ALS serves both from the block's one matrix product); returns how
    many users the engine answered one at a time."""
    from endcap.batch.block import answer_block

    got = answer_block(pipeline, block, k)  # type: ignore[arg-type]
    for row, user_id in enumerate(block):
        alone, _ = pipeline.recommend(pipeline.make_query(user_id, k))  # type: ignore[attr-defined]
        span = slice(int(got.offsets[row]), int(got.offsets[row + 1]))
        assert list(got.item_ids[span]) == list(alone.item_ids), (user_id, k)
        assert np.array_equal(got.scores[span], alone.scores), (user_id, k)
    return got.one_by_one


def test_the_batch_engine_answers_a_block_exactly_as_each_request(built: Built) -> None:
    """Items, order and scores of the block engine equal the request pipeline's, user by user,
    over blocks of several sizes (ties in score broken by position in both)."""
    pipeline = _batch_pipeline(built.workspace)
    users = pipeline.model.catalog.user_ids.tolist()  # type: ignore[attr-defined]
    for k, size in ((10, 64), (3, 37)):
        for start in range(0, len(users), size):
            assert _same_as_each_request(pipeline, users[start : start + size], k) == 0


def test_users_without_an_online_row_are_answered_one_at_a_time_and_the_same(built: Built) -> None:
    """A user the model knows but the store has no row for takes the request pipeline's own path
    (candidates from the model's purchase matrix, no learned ranker): the block engine hands them
    to it, counted."""
    from endcap.types import UserFeatures

    base = _batch_pipeline(built.workspace)
    users = base.model.catalog.user_ids.tolist()[:40]  # type: ignore[attr-defined]
    missing = set(users[::4])

    def read(user_id: str) -> UserFeatures:
        return UserFeatures(stats={}) if user_id in missing else base.users(user_id)  # type: ignore[attr-defined]

    pipeline = _batch_pipeline(built.workspace, users=read)
    assert _same_as_each_request(pipeline, users, 10) == len(missing)


def test_batch_workers_forked_after_the_model_loads_write_the_same_rows(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recommend_all`` on two forked processes of two threads each (every worker opening its own
    feature-store connection) gives exactly the rows of one process, in the same order."""
    from endcap.batch import local
    from endcap.batch.local import recommend_all

    monkeypatch.setattr(local, "BLOCK_USERS", 16)  # many blocks, so that every worker answers some
    pipeline = _batch_pipeline(built.workspace)
    alone = recommend_all(pipeline, 5, progress=False)  # type: ignore[arg-type]
    pipeline.users_of(pipeline.model.catalog.user_ids.tolist()[:3])  # type: ignore[attr-defined]  # a connection to inherit
    forked = recommend_all(pipeline, 5, threads=2, processes=2, progress=False)  # type: ignore[arg-type]
    assert len(alone) == 5 * len(pipeline.model.catalog.user_ids)  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(forked, alone)
