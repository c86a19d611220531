"""Real-time features with several writers, for real: 200 concurrent purchases for one user over
``endcap serve --processes 2`` (SQLite) and over two replicas sharing a Redis store; the user's
online row then holds exactly what the event log holds, a retried call counts once, and a plain
``endcap features`` afterwards keeps it so."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import make_generic_log, run_cli, start_redis, start_server, stop_redis, stop_server
from endcap.data.events import EventLog
from endcap.features.realtime import RealtimeFeatures
from endcap.features.store import OnlineFeatures
from endcap.types import Event
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from endcap.workspace import Workspace
from google.protobuf.timestamp_pb2 import Timestamp

THREADS, CALLS = 8, 25
BUYER = "u3"


def _burst(targets: list[str], backdated: bool = False) -> list[pb.Event]:
    """THREADS threads, each on its own connection (threads alternate between ``targets``), each
    recording CALLS purchases of new items, one per call; returns the events sent."""
    sent: list[pb.Event] = []
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            # a connection of its own (gRPC would otherwise share one between the channels of a
            # process, and one worker would take every call)
            own = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(targets[thread % len(targets)], options=own) as channel:
                stub = pb_grpc.RecommendationServiceStub(channel)
                for call in range(CALLS):
                    event = pb.Event(
                        user_id=BUYER,
                        item_id=f"burst-{thread}-{call}",
                        type=pb.EVENT_TYPE_PURCHASE,
                        event_id=f"call-{thread}-{call}",
                    )
                    if backdated and thread % 2:  # older than the stored row: must not be dropped
                        event.timestamp.CopyFrom(Timestamp(seconds=978_307_200 + call))  # 2001
                    _record_retrying_while_loading(stub, event)
                    sent.append(event)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return sent


def _record_retrying_while_loading(stub: pb_grpc.RecommendationServiceStub, event: pb.Event) -> None:
    """A worker of a server that has just started may still be loading its model: it refuses with
    UNAVAILABLE (nothing accepted) and a client retries, as storefront clients do."""
    for _ in range(200):
        try:
            stub.RecordEvents(pb.RecordEventsRequest(events=[event]), timeout=60)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.1)
    raise AssertionError(f"{event.event_id}: still UNAVAILABLE after 200 tries")


def _logged_purchases(workspace: Path, user_id: str) -> list[str]:
    return [e.item_id for e in EventLog(workspace / "events" / "events.jsonl").read() if e.user_id == user_id]


def _assert_row_holds_the_log(workspace: Path, before: dict, label: str) -> None:
    _, row = OnlineFeatures(Workspace(workspace)).user_row(BUYER)
    logged = _logged_purchases(workspace, BUYER)
    assert len(logged) == len(set(logged)) == THREADS * CALLS, "every purchase logged once"
    gained = set(row["item_ids"]) - set(before["item_ids"])
    print(
        f"{label}: expected {len(logged)} new items and orders; row gained {len(gained)} items, "
        f"{row['orders'] - before['orders']} orders"
    )
    assert gained == set(logged)
    assert row["orders"] == before["orders"] + len(logged)
    assert row["distinct_items"] == len(row["item_ids"])
    at = {item: i for i, item in enumerate(row["item_ids"])}
    assert all(row["times_bought"][at[item]] == 1 for item in logged)


def _retry_counts_once(target: str, workspace: Path) -> None:
    _, row = OnlineFeatures(Workspace(workspace)).user_row(BUYER)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        retried = [
            pb.Event(user_id=BUYER, item_id=f"burst-0-{n}", type=pb.EVENT_TYPE_PURCHASE, event_id=f"call-0-{n}")
            for n in range(3)
        ]
        assert stub.RecordEvents(pb.RecordEventsRequest(events=retried), timeout=60).accepted == 3
    _, again = OnlineFeatures(Workspace(workspace)).user_row(BUYER)
    assert again == row, "a retried call (same event ids) changed the row"
    assert len(_logged_purchases(workspace, BUYER)) == THREADS * CALLS


@pytest.mark.timeout(600)
def test_purchases_over_two_processes_reach_the_row_exactly_once(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    (workspace / "events").mkdir(exist_ok=True)
    (workspace / "events" / "events.jsonl").unlink(missing_ok=True)
    _, before = OnlineFeatures(Workspace(workspace)).user_row(BUYER)
    server = start_server(workspace, tmp_path, extra_args=("--processes", "2"))
    try:
        _burst([server.target])
        _assert_row_holds_the_log(workspace, before, "2 processes")
        _retry_counts_once(server.target, workspace)
        run_cli("features", workspace=workspace)  # the server still running
        _assert_row_holds_the_log(workspace, before, "2 processes, after endcap features")
    finally:
        assert stop_server(server) == 0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    stop_redis(server)


@pytest.mark.timeout(900)
def test_purchases_over_two_replicas_on_redis_reach_the_row_exactly_once(redis_url: str, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    config = {"feature_store": {"profile": "redis", "redis": redis_url, "registry": str(tmp_path / "registry.db")}}
    (workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
    make_generic_log(users=40, items=60, baskets=6).to_csv(tmp_path / "log.csv", index=False)
    run_cli("ingest", str(tmp_path / "log.csv"), workspace=workspace)
    run_cli("features", workspace=workspace)
    run_cli("train", "--no-validate", workspace=workspace)
    run_cli("promote", "--force", workspace=workspace)  # unvalidated: the gate has nothing to compare
    _, before = OnlineFeatures(Workspace(workspace)).user_row(BUYER)
    replicas = [start_server(workspace, tmp_path) for _ in range(2)]
    try:
        _burst([r.target for r in replicas], backdated=True)
        _assert_row_holds_the_log(workspace, before, "2 replicas on Redis")
        _retry_counts_once(replicas[1].target, workspace)
        run_cli("features", workspace=workspace)
        _assert_row_holds_the_log(workspace, before, "2 replicas on Redis, after endcap features")
    finally:
        for replica in replicas:
            stop_server(replica)


def test_a_pushed_row_carries_its_events_time_and_is_always_the_newest_write(
    synthetic_workspace: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    online = OnlineFeatures(Workspace(workspace))
    realtime = RealtimeFeatures(online.user_row, online.push, online.row_lock())
    stored, _ = online.user_row(BUYER)
    assert stored is not None
    later = stored + 86_400 * 365 * 5  # five years after the stored snapshot, whatever the clock says
    realtime.apply([Event(BUYER, "i1", "purchase", 1, later - 5), Event(BUYER, "i2", "purchase", 1, later)])
    written, row = online.user_row(BUYER)
    assert written == pytest.approx(later, abs=1e-3)
    realtime.apply([Event(BUYER, "i3", "purchase", 1, 1_000_000_000.0)])  # from 2001: older than the row
    newer, row = online.user_row(BUYER)
    # stamped 1 ms after the row it replaced, not in 2001 (SQLite keeps whole seconds)
    assert later <= newer <= later + 0.001 and "i3" in row["item_ids"]
