"""Loud failures instead of silent degradation: the online store is checked against the log and
the model at every step, and a user the model knows but the store lacks is not a stranger."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pandas as pd
import pytest
from conftest import ENDCAP, log_events, make_generic_log, run_cli, start_server, stop_server
from endcap.testing import free_port
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_any_log import ratings_log


def _ingest(workspace: Path, log: pd.DataFrame, name: str) -> None:
    path = workspace.parent / f"{name}.csv"
    log.to_csv(path, index=False)
    run_cli("ingest", str(path), workspace=workspace)


def _renamed(log: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return log.assign(user_id=prefix + log["user_id"].astype(str))


def test_features_refuses_a_materialization_that_leaves_users_out(tmp_path: Path) -> None:
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.coverage import IncompleteMaterialization
    from endcap.features.store import write_and_materialize
    from endcap.features.tables import iter_snapshots
    from endcap.workspace import Workspace

    make_generic_log(users=12).to_csv(tmp_path / "log.csv", index=False)
    workspace = Workspace.resolve(tmp_path / "ws")
    ingest(tmp_path / "log.csv", workspace)
    log = load_interactions(workspace)
    expected = {"user_stats": [*log["user_id"].unique(), "a-user-the-snapshots-lack"]}
    with pytest.raises(IncompleteMaterialization) as refused:
        write_and_materialize(workspace, iter_snapshots(log), expected=expected)
    assert "lacks current rows for 1 of 13 users (e.g. 'a-user-the-snapshots-lack')" in str(refused.value)
    assert "endcap features --full" in str(refused.value)
    assert not (workspace.feast / "materialized.json").exists(), "an incomplete run was recorded as done"


def test_train_refuses_a_log_whose_users_the_store_lacks(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _ingest(workspace, make_generic_log(users=12), "first")
    run_cli("features", workspace=workspace)
    _ingest(workspace, _renamed(make_generic_log(users=10, seed=2), "new-"), "second")  # no 'endcap features'
    result = run_cli("train", "--no-validate", workspace=workspace, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "model not written: the online store lacks 10 of 10 users" in result.stderr
    assert "run 'endcap features'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((workspace / "models").glob("v*")), "a model was written"


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def test_serve_stays_not_serving_until_model_and_store_match(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    first = make_generic_log(users=12)
    _ingest(workspace, first, "first")
    run_cli("features", workspace=workspace)
    run_cli("train", "--no-validate", workspace=workspace)
    run_cli("promote", "--force", workspace=workspace)  # unvalidated: the gate has nothing to compare
    (workspace / "feast" / "online.db").unlink()  # the store is rebuilt from another log
    _ingest(workspace, _renamed(make_generic_log(users=10, seed=2), "other-"), "second")
    run_cli("features", workspace=workspace)

    port = free_port()
    target = f"127.0.0.1:{port}"
    stderr_path = tmp_path / "serve.log"
    process = subprocess.Popen(
        [ENDCAP, "serve", "--workspace", str(workspace), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("w"),
    )
    try:
        deadline = time.monotonic() + 90
        while not any(e.get("event") == "not_serving" for e in log_events(stderr_path.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.RecommendationServiceStub(channel).Recommend(pb.RecommendRequest(user_id="u1"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "does not match the online store" in refused.value.details()
        assert "lacks 12 of 12 users" in refused.value.details()

        _ingest(workspace, first, "first-again")  # the store gets the model's users back
        run_cli("features", workspace=workspace)
        deadline = time.monotonic() + 30
        while _health(target) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        with grpc.insecure_channel(target) as channel:
            answer = pb_grpc.RecommendationServiceStub(channel).Recommend(pb.RecommendRequest(user_id="u1"), timeout=5)
        assert len(answer.items) == 10
    finally:
        process.terminate()
        process.wait(timeout=30)


def _delete_row(workspace: Path, table: str, join_key: str, entity: str) -> int:
    from endcap.features.store import open_store
    from endcap.workspace import Workspace
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = open_store(Workspace(workspace))
    key = serialize_entity_key(
        EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity)]),
        store.config.entity_key_serialization_version,
    )
    with sqlite3.connect(workspace / "feast" / "online.db") as connection:
        return connection.execute(f'DELETE FROM "endcap_{table}" WHERE entity_key = ?', (key,)).rowcount


def test_a_known_user_missing_from_the_store_is_answered_from_the_model_and_counted(tmp_path: Path) -> None:
    log = ratings_log(users=60, items=120)
    workspace = tmp_path / "ws"
    _ingest(workspace, log, "ratings")
    run_cli("features", workspace=workspace)
    run_cli("train", "--no-validate", workspace=workspace)
    run_cli("promote", "--force", workspace=workspace)  # unvalidated: the gate has nothing to compare
    assert _delete_row(workspace, "product_stats", "item_id", str(log["item_id"].iloc[0])) > 0  # a product's too
    metrics_port = free_port()
    server = start_server(workspace, tmp_path, extra_args=("--metrics-port", str(metrics_port)))
    try:
        [lost] = [e for e in log_events(server.stderr_path.read_text()) if e["event"] == "products_missing_from_store"]
        assert lost["missing"] == 1 and lost["level"] == "warning"
        assert _delete_row(workspace, "user_stats", "user_id", "user-7") > 0  # e.g. evicted from the store
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            answer = stub.Recommend(pb.RecommendRequest(user_id="user-7", k=20), timeout=10)
            stranger = stub.Recommend(pb.RecommendRequest(user_id="nobody", k=20), timeout=10)
        rated = set(log.loc[log["user_id"] == "user-7", "item_id"])
        items = [i.item_id for i in answer.items]
        assert len(items) == 20
        assert not set(items) & rated, "a film the user rated came back"
        assert items != [i.item_id for i in stranger.items], "answered like a stranger"
        deadline = time.monotonic() + 10
        while True:
            events = log_events(server.stderr_path.read_text())
            requests = [e for e in events if e.get("event") == "recommend"]
            if len(requests) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [e.get("online_miss", False) for e in requests] == [True, False]
        assert [e.get("cold_start", False) for e in requests] == [False, True]
        assert any(e.get("event") == "online_feature_miss" and e["level"] == "warning" for e in events)
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "endcap_online_feature_misses_total" in scraped
        [count] = [line for line in scraped.splitlines() if line.startswith("endcap_online_feature_misses_total")]
        assert float(count.rsplit(" ", 1)[1]) == 1.0
    finally:
        assert stop_server(server) == 0
