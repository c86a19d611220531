"""Limits, overload, and durability of acknowledged events."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import endcap
import grpc
import numpy as np
import pytest
import yaml
from conftest import ENDCAP, free_port, log_events, start_server
from endcap.config import ComponentBlock, EndcapConfig, LimitsConfig, ServingConfig
from endcap.data.events import EventLog
from endcap.features.store import OnlineFeatures
from endcap.plugin_host import PluginHost
from endcap.serving.server import Server
from endcap.serving.service import RecommendationService
from endcap.types import Event
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from endcap.workspace import Workspace


class SlowCandidates(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        time.sleep(0.5)
        return endcap.Candidates(np.array([0], dtype=np.int32), np.array([1.0], dtype=np.float32))


class Slow:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(SlowCandidates, type_name="slow")


LIMITS = LimitsConfig(
    max_message_bytes=64 * 1024,
    max_exclude_items=5,
    max_context_entries=2,
    max_id_length=32,
    max_events_per_call=3,
    max_concurrent_requests=1,
)


def slow_server(workspace: Path, limits: LimitsConfig, max_workers: int) -> Server:
    """A started server with the popularity source and one that takes half a second."""
    candidates = {"popularity": ComponentBlock(type="popularity"), "slow": ComponentBlock(type="slow", budget_ms=5000)}
    config = EndcapConfig(limits=limits, candidates=candidates)
    host = PluginHost(config, extra_plugins={"slow": Slow()})
    server = Server("127.0.0.1", free_port(), ServingConfig(max_workers=max_workers), limits)
    server.attach(RecommendationService(Workspace(workspace), config, host, OnlineFeatures(Workspace(workspace))))
    return server


@pytest.fixture(scope="module")
def stub(synthetic_workspace: Path) -> Iterator[pb_grpc.RecommendationServiceStub]:
    server = slow_server(synthetic_workspace, LIMITS, 4)
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommendationServiceStub(channel)
    server.stop(grace=1)


def refused(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (
            pb.RecommendRequest(user_id="u1", exclude_item_ids=[f"i{i}" for i in range(6)]),
            "limits.max_exclude_items) is 5",
        ),
        (pb.RecommendRequest(user_id="u1", context={"a": "1", "b": "2", "c": "3"}), "limits.max_context_entries) is 2"),
        (pb.RecommendRequest(user_id="u" * 33), "limits.max_id_length) is 32"),
    ],
)
def test_recommend_limits_are_named(stub: pb_grpc.RecommendationServiceStub, request_: Any, words: str) -> None:
    error = refused(stub.Recommend, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details()


def test_events_per_call_limit(stub: pb_grpc.RecommendationServiceStub) -> None:
    events = [pb.Event(user_id="u1", item_id="i1", type=pb.EVENT_TYPE_VIEW)] * 4
    error = refused(stub.RecordEvents, pb.RecordEventsRequest(events=events))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4 events in one call; the limit (limits.max_events_per_call) is 3" in error.details()


def test_oversized_message_is_resource_exhausted(stub: pb_grpc.RecommendationServiceStub) -> None:
    error = refused(stub.Recommend, pb.RecommendRequest(user_id="u1", context={"blob": "x" * 70_000}))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in error.details()


def test_calls_past_the_concurrency_limit_are_refused_at_once(stub: pb_grpc.RecommendationServiceStub) -> None:
    outcomes: list[Any] = []

    def call() -> None:
        try:
            outcomes.append(stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10))
        except grpc.RpcError as exc:
            outcomes.append(exc)

    first = threading.Thread(target=call)
    first.start()
    time.sleep(0.2)  # the first call is inside the slow source now
    started = time.perf_counter()
    call()
    waited = time.perf_counter() - started
    first.join()
    errors = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 1 calls in flight (limits.max_concurrent_requests)" in errors[0].details()
    assert waited < 0.25, "refused at once, not queued"


def test_calls_waiting_for_a_thread_count_towards_the_limit(synthetic_workspace: Path) -> None:
    """One worker thread, a limit of three: two calls wait behind the running one, and the
    fourth is refused at once rather than queued; health is answered meanwhile."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = slow_server(synthetic_workspace, LimitsConfig(max_concurrent_requests=3), 1)
    outcomes: list[Any] = []
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)

            def call() -> None:
                outcomes.append(stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10))

            admitted = [threading.Thread(target=call) for _ in range(3)]
            for thread in admitted:
                thread.start()
                time.sleep(0.05)
            started = time.perf_counter()
            error = refused(stub.Recommend, pb.RecommendRequest(user_id="u1", k=3))
            waited = time.perf_counter() - started
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            health_waited = time.perf_counter() - started
            for thread in admitted:
                thread.join()
    finally:
        server.stop(grace=1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 3 calls in flight (limits.max_concurrent_requests)" in error.details()
    assert waited < 0.25, "refused at once, not queued behind the waiting calls"
    assert health.status == health_pb2.HealthCheckResponse.SERVING and health_waited < 0.4
    assert len(outcomes) == 3 and all(len(o.items) >= 1 for o in outcomes), "every admitted call was answered"


def test_torn_last_record_is_cut_and_kept_aside(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.append([Event("u1", "i1", "purchase", 1, 1.0), Event("u1", "i2", "view", 1, 2.0)])
    with (tmp_path / "events.jsonl").open("ab") as handle:
        handle.write(b'{"user_id":"u1","item_id":"i3","ty')
    assert log.repair() == len(b'{"user_id":"u1","item_id":"i3","ty')
    assert [e.item_id for e in log.read()] == ["i1", "i2"]
    torn = list(tmp_path.glob("events.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes().startswith(b'{"user_id":"u1"')
    assert log.repair() == 0


def test_no_acknowledged_event_is_lost_when_the_server_is_killed(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"  # its own copy: the kill may leave the online store mid-write
    shutil.copytree(synthetic_workspace, workspace)
    server = start_server(workspace, tmp_path)
    log_path = workspace / "events" / "events.jsonl"
    before = log_path.read_text().count("\n") if log_path.exists() else 0
    acknowledged: list[str] = []
    stop = threading.Event()

    def record() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            n = 0
            while not stop.is_set():
                item = f"kill-test-{n}"
                try:
                    stub.RecordEvents(
                        pb.RecordEventsRequest(
                            events=[pb.Event(user_id="u1", item_id=item, type=pb.EVENT_TYPE_PURCHASE)]
                        ),
                        timeout=5,
                    )
                except grpc.RpcError:
                    return
                acknowledged.append(item)
                n += 1

    writer = threading.Thread(target=record)
    writer.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stop.set()
    writer.join()
    assert len(acknowledged) > 10

    restarted = start_server(workspace, tmp_path)  # repairs the log on start
    restarted.process.send_signal(signal.SIGTERM)
    restarted.process.wait()
    lines = log_path.read_text().splitlines()
    recorded = {json.loads(line)["item_id"] for line in lines[before:]}
    assert set(acknowledged) <= recorded
    assert log_path.read_bytes().endswith(b"\n")


def test_a_tampered_model_is_refused_and_the_previous_version_serves(tmp_path: Path) -> None:
    from conftest import prepared_workspace
    from endcap.model_versions import CorruptArtifact, ModelRegistry
    from endcap.release.validated_training import train
    from endcap.serving.model import load_newest_sound_model, load_serving_model

    workspace = prepared_workspace(tmp_path, users=15, items=20, baskets=4)
    host = PluginHost(EndcapConfig())
    first = train(workspace, host, validate=False)
    second = train(workspace, host, validate=False)
    registry = ModelRegistry(workspace.models)
    assert registry.current() == second.version and len(registry.manifest().checksums) > 5
    online = OnlineFeatures(workspace)

    tampered = registry.path(second.version) / "components" / "candidates" / "popularity" / "popularity.npz"
    tampered.write_bytes(tampered.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(
        CorruptArtifact, match=r"components/candidates/popularity/popularity.npz does not match its checksum"
    ):
        load_serving_model(workspace, host, online)
    assert load_newest_sound_model(workspace, host, online).version == first.version

    (registry.path(first.version) / "catalog.npz").unlink()
    with pytest.raises(CorruptArtifact, match=r"popularity.npz does not match .* no earlier version is sound either"):
        load_newest_sound_model(workspace, host, online)


def test_a_passed_deadline_stops_the_work(synthetic_workspace: Path) -> None:
    from endcap.errors import DeadlineExceeded
    from endcap.logs import deadline_var

    config = EndcapConfig()
    workspace = Workspace(synthetic_workspace)
    service = RecommendationService(workspace, config, PluginHost(config), OnlineFeatures(workspace))
    token = deadline_var.set(time.monotonic() - 0.001)
    try:
        with pytest.raises(DeadlineExceeded, match="deadline passed after starting"):
            service.recommend("r", "u1", 5, [], {}, "")
    finally:
        deadline_var.reset(token)
    assert len(service.recommend("r", "u1", 5, [], {}, "").item_ids) == 5


def test_slow_calls_end_at_the_client_deadline(stub: pb_grpc.RecommendationServiceStub) -> None:
    error = refused(lambda request, timeout: stub.Recommend(request, timeout=0.2), pb.RecommendRequest(user_id="u1"))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)  # let the server side reach its deadline check before the server is torn down


STUCK_SOURCE = """
import signal
import sys
import threading

import endcap
import numpy as np


class StuckCandidates(endcap.CandidateGenerator):
    def generate(self, query, user, n):
        if query.user_id == "stuck":
            threading.Event().wait()  # a call that never returns
        return endcap.Candidates(np.array([0], dtype=np.int32), np.array([1.0], dtype=np.float32))


class StuckLoading(StuckCandidates):
    def load(self, context):
        print("stuck in load", file=sys.stderr, flush=True)
        threading.Event().wait()  # a model load that never ends


class DeafLoading(StuckCandidates):
    def load(self, context):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        print("stuck in load", file=sys.stderr, flush=True)
        threading.Event().wait()  # stuck, and the stop signals never reach Python
"""


def stuck_workspace(synthetic_workspace: Path, tmp_path: Path, source_type: str) -> Path:
    """A copy of the workspace serving popularity and a source from ``STUCK_SOURCE``, with short
    shutdown settings; the source's module is in ``tmp_path`` (put it on ``PYTHONPATH``)."""
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    (tmp_path / "stuck_source.py").write_text(STUCK_SOURCE)
    config = {
        "candidates": {
            "replace_defaults": True,
            "popularity": {"type": "popularity"},
            "stuck": {"type": f"stuck_source.{source_type}"},
        },
        "serving": {"shutdown_grace_seconds": 0.5, "shutdown_timeout_seconds": 3},
    }
    (workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
    return workspace


def test_a_call_stuck_in_a_plugin_cannot_keep_a_stopped_server_alive(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = stuck_workspace(synthetic_workspace, tmp_path, "StuckCandidates")
    server = start_server(workspace, tmp_path, env={"PYTHONPATH": str(tmp_path)})
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as stuck:
            stub.Recommend(pb.RecommendRequest(user_id="stuck", k=3), timeout=1)
        assert stuck.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10).items  # the rest still served
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 1
    assert time.monotonic() - signalled < 10
    log = server.stderr_path.read_text()
    # drained and stopped; only the stuck thread held the exit
    assert "stopped" in [line["event"] for line in log_events(log)]
    assert "stuck_source.py" in log and "in generate" in log  # the stacks say where it was stuck


@pytest.mark.parametrize(
    ("source_type", "processes", "exit_code"),
    [("StuckLoading", "1", 1), ("DeafLoading", "2", 128 + signal.SIGABRT)],
    ids=["stuck-in-load", "deaf-workers-killed-by-the-parent"],
)
def test_a_plugin_stuck_while_the_model_loads_cannot_keep_the_server_from_stopping(
    synthetic_workspace: Path, tmp_path: Path, source_type: str, processes: str, exit_code: int
) -> None:
    import psutil

    workspace = stuck_workspace(synthetic_workspace, tmp_path, source_type)
    log_path = tmp_path / "serve.log"
    workers: list[psutil.Process] = []
    process = subprocess.Popen(
        [ENDCAP, "serve", "--workspace", str(workspace), "--port", str(free_port()), "--processes", processes],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("stuck in load") < int(processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = psutil.Process(process.pid).children()
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    finally:
        for worker in workers:  # still running only if the test failed
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        process.kill()
    assert code == exit_code  # 1: its own watchdog; 128 + SIGABRT: the parent's escalation
    assert time.monotonic() - signalled < 12
    log = log_path.read_text()
    assert "stuck_source.py" in log and "in load" in log  # every worker's stacks say where
