"""Ingest → features → train through the CLI on a slice of the Instacart sample, then the real
server on a free port, called with the generated client."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from conftest import RunningServer, log_events, run_cli, start_server, stop_server
from endcap.data.demo import instacart_sample
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SLICE_USERS = 120


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    sample = pd.read_csv(instacart_sample(), index_col=0)
    users = sorted(sample["user_id"].unique())[:SLICE_USERS]
    sliced = root / "instacart_slice.csv"
    sample[sample["user_id"].isin(users)].to_csv(sliced, index=False)
    workspace = root / "ws"
    assert "instacart format" in run_cli("ingest", str(sliced), workspace=workspace).stdout
    assert "materialized" in run_cli("features", workspace=workspace).stdout
    assert "now current" in run_cli("train", workspace=workspace).stdout
    return workspace


@pytest.fixture(scope="module")
def server(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(workspace, tmp_path_factory.mktemp("logs"))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.RecommendationServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RecommendationServiceStub(channel)


def history(workspace: Path) -> pd.DataFrame:
    return pd.read_parquet(workspace / "data" / "interactions.parquet")


def test_health_is_serving_and_reflection_lists_the_service(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "endcap.v1.RecommendationService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"endcap.v1.RecommendationService", "grpc.health.v1.Health"} <= names


def test_recommend_returns_k_unique_items(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    reply = stub.Recommend(pb.RecommendRequest(user_id="1", k=10), timeout=5)
    ids = [item.item_id for item in reply.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert reply.request_id and reply.model_version == (workspace / "models" / "CURRENT").read_text().strip()
    assert all(item.sources for item in reply.items)
    assert set(ids) <= set(history(workspace)["item_id"])


def test_a_users_frequent_purchases_appear(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    log = history(workspace)
    counts = log[log["user_id"] == "1"].groupby("item_id")["basket_id"].nunique().sort_values(ascending=False)
    week_after = Timestamp(seconds=int(pd.Timestamp(log["timestamp"].max()).timestamp()) + 7 * 86_400)
    for as_of in (None, week_after):  # answered as of the log's end, and a week later
        reply = stub.Recommend(pb.RecommendRequest(user_id="1", k=10, as_of=as_of), timeout=5)
        ids = [item.item_id for item in reply.items]
        assert counts.index[0] in ids
        assert len(set(counts.index[:5]) & set(ids)) >= 3


def test_excluded_items_are_absent(stub: pb_grpc.RecommendationServiceStub) -> None:
    first = [i.item_id for i in stub.Recommend(pb.RecommendRequest(user_id="1", k=10), timeout=5).items]
    reply = stub.Recommend(pb.RecommendRequest(user_id="1", k=10, exclude_item_ids=first[:4]), timeout=5)
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 10 and not set(first[:4]) & set(ids)


def test_unknown_user_gets_popular_items(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    reply = stub.Recommend(pb.RecommendRequest(user_id="never-seen", k=5), timeout=5)
    popular = history(workspace)["item_id"].value_counts().index[:20]
    assert len(reply.items) == 5
    assert {i.item_id for i in reply.items} <= set(popular)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (pb.RecommendRequest(user_id="1", k=-1), "k must be between 1 and 1000"),
        (pb.RecommendRequest(user_id="1", k=1001), "k must be between 1 and 1000"),
        (pb.RecommendRequest(user_id="", k=5), "user_id is required"),
        (pb.RecommendRequest(user_id="1", k=5, as_of=Timestamp(seconds=-5)), "as_of must be between 1970 and 2100"),
    ],
)
def test_bad_recommend_requests_are_invalid_argument(
    stub: pb_grpc.RecommendationServiceStub, request_: pb.RecommendRequest, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_similar_items(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    item = history(workspace)["item_id"].value_counts().index[0]
    reply = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=5), timeout=5)
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 5 and item not in ids
    with pytest.raises(grpc.RpcError) as caught:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item", k=5), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_record_events_are_in_the_event_log(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    when = Timestamp(seconds=1_700_000_000)
    events = [
        pb.Event(user_id="1", item_id="196", type=pb.EVENT_TYPE_PURCHASE, quantity=2, timestamp=when),
        pb.Event(user_id="1", item_id="12427", type=pb.EVENT_TYPE_VIEW),
    ]
    reply = stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=5)
    assert reply.accepted == 2
    lines = [json.loads(line) for line in (workspace / "events" / "events.jsonl").read_text().splitlines()]
    assert {"user_id": "1", "item_id": "196", "type": "purchase", "quantity": 2, "timestamp": 1_700_000_000.0} in lines
    assert any(e["item_id"] == "12427" and e["type"] == "view" and e["quantity"] == 1 for e in lines)


def test_invalid_event_batch_is_refused_whole(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    log = workspace / "events" / "events.jsonl"
    before = log.read_text() if log.exists() else ""
    events = [
        pb.Event(user_id="1", item_id="196", type=pb.EVENT_TYPE_PURCHASE),
        pb.Event(user_id="1", item_id="196", type=pb.EVENT_TYPE_UNSPECIFIED),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].type" in caught.value.details()
    assert (log.read_text() if log.exists() else "") == before


def test_model_info(stub: pb_grpc.RecommendationServiceStub, workspace: Path) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.model_version == (workspace / "models" / "CURRENT").read_text().strip()
    assert info.users == SLICE_USERS
    assert info.training_rows == len(history(workspace))
    assert len(info.data_fingerprint) == 64
    assert {"als", "popularity", "structlog_monitor"} <= {p.name for p in info.plugins}
    assert "candidates/als (als)" in info.components


def test_request_log_has_one_json_line_per_request(
    stub: pb_grpc.RecommendationServiceStub, server: RunningServer
) -> None:
    reply = stub.Recommend(pb.RecommendRequest(user_id="2", k=3), timeout=5)
    deadline = time.monotonic() + 2.0  # monitors write within 20 ms of the answer, off the request path
    while True:
        lines = log_events(server.stderr_path.read_text())
        logged = [line for line in lines if line.get("request_id") == reply.request_id and line["event"] == "recommend"]
        if logged or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(logged) == 1
    assert logged[0]["k"] == 3 and logged[0]["model_version"] == reply.model_version
    assert "user_id" not in logged[0] and logged[0]["user_key"]
    assert set(logged[0]["stage_ms"]) >= {"candidates", "rank"}


def test_cli_recommend_prints_the_servers_answer(
    server: RunningServer, stub: pb_grpc.RecommendationServiceStub
) -> None:
    result = run_cli("recommend", "--user-id", "1", "--target", server.target)
    reply = stub.Recommend(pb.RecommendRequest(user_id="1", k=10), timeout=5)
    header, columns, *rows = [line for line in result.stdout.splitlines() if line.strip()]
    assert header.startswith(f"model {reply.model_version}, request ")
    assert columns.split() == ["rank", "item_id", "score", "sources"]
    printed = [row.split() for row in rows]
    expected = [
        [str(rank), item.item_id, f"{item.score:.4f}", ",".join(item.sources)]
        for rank, item in enumerate(reply.items, start=1)
    ]
    assert len(expected) == 10 and printed == expected
    week_after = (pd.Timestamp(history(server.workspace)["timestamp"].max()) + pd.Timedelta(days=7)).floor("s")
    dated = run_cli("recommend", "--user-id", "1", "--target", server.target, "--as-of", week_after.isoformat())
    asked = pb.RecommendRequest(user_id="1", k=10, as_of=Timestamp(seconds=int(week_after.timestamp())))
    reply = stub.Recommend(asked, timeout=5)
    assert [row.split()[1] for row in dated.stdout.splitlines()[2:] if row.strip()] == [i.item_id for i in reply.items]
    refused = run_cli("recommend", "--user-id", "1", "--target", server.target, "--as-of", "next tuesday", check=False)
    assert refused.returncode != 0 and "--as-of: expected an ISO-8601 time" in refused.stderr


def test_cli_batch_covers_every_user(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"
    run_cli("batch", "--out", str(out), "--k", "5", workspace=workspace)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user_id", "item_id", "rank", "score"]
    assert frame["user_id"].nunique() == SLICE_USERS
    ranks = frame.groupby("user_id")["rank"].apply(list)
    assert all(r == [1, 2, 3, 4, 5] for r in ranks)
    assert frame.groupby("user_id")["item_id"].nunique().eq(5).all()


def test_sigterm_drains_and_exits_zero(workspace: Path, tmp_path: Path) -> None:
    running = start_server(workspace, tmp_path)
    with grpc.insecure_channel(running.target) as channel:
        assert pb_grpc.RecommendationServiceStub(channel).Recommend(pb.RecommendRequest(user_id="1"), timeout=5).items
    assert stop_server(running) == 0
    assert "stopped" in [line["event"] for line in log_events(running.stderr_path.read_text())]


def test_cli_plugins_lists_builtins_with_versions_hooks_and_types(tmp_path: Path) -> None:
    out = run_cli("plugins", workspace=tmp_path).stdout
    assert "als 0.1.0  (endcap.plugins.als)" in out
    assert "hooks: endcap_register_components" in out
    assert "components: candidates:als" in out
    assert "components: filters:blocklist" in out


def test_cli_errors_name_the_problem_without_traceback(tmp_path: Path) -> None:
    result = run_cli("train", workspace=tmp_path, check=False)
    assert result.returncode == 1
    assert "run 'endcap ingest PATH'" in result.stderr and "Traceback" not in result.stderr


def test_several_processes_share_the_port_and_stop_together(workspace: Path, tmp_path: Path) -> None:
    import psutil

    running = start_server(workspace, tmp_path, extra_args=("--processes", "2", "--pin-cpus"))
    workers = psutil.Process(running.process.pid).children()
    assert len(workers) == 2
    answered = 0
    for user in ("1", "2", "5", "7") * 5:
        with grpc.insecure_channel(running.target) as channel:  # a new connection may reach either worker
            stub = pb_grpc.RecommendationServiceStub(channel)
            for _ in range(100):  # a worker still loading answers UNAVAILABLE: clients retry
                try:
                    reply = stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    time.sleep(0.1)
            else:
                pytest.fail(f"user {user}: no worker answered in 100 tries")
            answered += len(reply.items) == 5
    assert answered == 20
    pinned = []  # --pin-cpus: every thread of a worker on the one core the worker was given
    for worker in workers:
        threads = worker.threads()
        cores = {tuple(sorted(os.sched_getaffinity(thread.id))) for thread in threads}
        assert len(threads) > 3 and len(cores) == 1
        pinned.append(cores.pop())
    allowed = sorted(os.sched_getaffinity(0))
    assert sorted(pinned) == sorted((allowed[i % len(allowed)],) for i in range(2))
    assert stop_server(running) == 0
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)


def test_sigterm_while_the_model_loads_still_exits_zero(workspace: Path, tmp_path: Path) -> None:
    import signal
    import subprocess

    from conftest import ENDCAP, free_port

    process = subprocess.Popen(
        [ENDCAP, "serve", "--workspace", str(workspace), "--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the port to be open, model not yet loaded
        line = process.stderr.readline()
        if '"listening"' in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
