"""A real server with its monitoring plugins, read back from /metrics: service metrics,
recommendation health, online quality, and drift alarms for shifted traffic."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import endcap
import grpc
import numpy as np
import pytest
import yaml
from conftest import RunningServer, free_port, log_events, prepared_workspace, run_cli, start_server, stop_server
from endcap.plugins.drift import psi, reference_histogram, shares
from endcap.plugins.recommendation_health import RecommendationHealth, RecommendationHealthConfig, gini
from endcap.types import Query, StageTimings
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

WATCHED = ["product.purchases", "product.distinct_buyers"]


def test_psi_and_gini_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    edges, expected = reference_histogram(reference, 10)
    assert len(edges) == 9 and abs(sum(expected) - 1) < 1e-9
    assert psi(np.array(expected), shares(rng.normal(size=5000), np.array(edges))) < 0.02
    assert psi(np.array(expected), shares(rng.normal(1.0, size=5000), np.array(edges))) > 0.5
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 100])) == pytest.approx(0.75)
    assert gini(np.array([100]), catalog_size=4) == pytest.approx(0.75)  # unrecommended items count


def test_recommendation_health_describes_only_the_last_window_of_answers() -> None:
    health = RecommendationHealth("health", RecommendationHealthConfig(window=3))
    health.catalog_size = 10
    assert health.snapshot()["coverage"] == 0 and health.snapshot()["requests"] == 0

    def answer(items: list[str], cold: bool = False, fallback: bool = False) -> None:
        health.on_request(
            endcap.RequestRecord(
                request_id="r",
                query=Query("u", 0, 3),
                model_version="v1",
                candidates_per_source={},
                item_ids=tuple(items),
                scores=np.zeros(len(items), dtype=np.float32),
                timings=StageTimings({}),
                cold_start=cold,
                fallback=fallback,
            )
        )

    answer(["x", "y", "z"])  # out of the window once the fourth answer comes
    answer(["a", "b", "c"], cold=True)
    answer(["a", "b"])
    answer([], fallback=True)
    snapshot = health.snapshot()
    assert snapshot["requests"] == 3 and snapshot["coverage"] == pytest.approx(3 / 10)
    assert snapshot["gini"] == pytest.approx(gini(np.array([2, 2, 1]), 10))
    assert snapshot["cold_start_share"] == pytest.approx(1 / 3) and snapshot["fallback_share"] == pytest.approx(1 / 3)
    assert snapshot["short_answer_share"] == pytest.approx(2 / 3)
    assert snapshot["empty_answer_share"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, int]]:
    root = tmp_path_factory.mktemp("monitoring")
    workspace = prepared_workspace(root, users=80, items=400, baskets=6).root
    monitors = {
        "request_log": {"type": "structlog"},
        "metrics": {"type": "prometheus"},
        "health": {"type": "recommendation_health", "window": 200},
        "online_quality": {"type": "online_quality", "attribution_hours": 1},
        "drift": {"type": "drift", "features": WATCHED, "window": 60, "min_requests": 30, "check_seconds": 1.0},
        "recorder": {"type": "recorder", "interval_seconds": 0.3},
    }
    (workspace / "endcap.yaml").write_text(yaml.safe_dump({"monitors": monitors}))
    run_cli("train", workspace=workspace)
    metrics_port = free_port()
    server = start_server(workspace, root, extra_args=("--metrics-port", str(metrics_port)))
    yield server, metrics_port
    stop_server(server)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items()))


def ask(server: RunningServer, users: list[str]) -> list[pb.RecommendResponse]:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        return [stub.Recommend(pb.RecommendRequest(user_id=u, k=10), timeout=10) for u in users]


def test_normal_traffic_raises_no_alarm_and_fills_the_service_metrics(served: tuple[RunningServer, int]) -> None:
    server, port = served
    replies = ask(server, [f"u{i % 80}" for i in range(60)])
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.RecommendationServiceStub(channel).Recommend(pb.RecommendRequest(user_id="", k=10), timeout=10)
    samples = scrape(port)
    assert value(samples, "endcap_requests_total", method="Recommend", code="OK") == 60
    assert value(samples, "endcap_requests_total", method="Recommend", code="INVALID_ARGUMENT") == 1
    assert value(samples, "endcap_request_duration_seconds_count", method="Recommend") == 61
    assert value(samples, "endcap_stage_duration_seconds_count", stage="rank", variant="default") == 60
    assert value(samples, "endcap_candidates_per_request_count", source="repurchase") == 60
    assert value(samples, "endcap_model_info", version=replies[0].model_version) == 1
    assert 0 < value(samples, "endcap_recommendations_coverage") <= 1
    assert 0 < value(samples, "endcap_recommendations_gini") < 1
    assert value(samples, "endcap_recommendations_cold_start_share") == 0
    psis = {labels["feature"]: v for labels, v in samples["endcap_feature_psi"]}
    assert set(psis) == set(WATCHED), "the drift monitor watches what it was configured to"
    assert all(v < 0.2 for v in psis.values()), psis
    assert all(v == 0 for _, v in samples["endcap_drift_alarm"]), samples["endcap_drift_alarm"]


def test_shifted_traffic_raises_the_alarm(served: tuple[RunningServer, int]) -> None:
    server, port = served
    ask(server, [f"newcomer-{i}" for i in range(60)])  # cold-start shoppers only see best-sellers
    samples = scrape(port)
    alarms = {labels["feature"]: v for labels, v in samples["endcap_drift_alarm"]}
    assert alarms["product.purchases"] == 1
    assert value(samples, "endcap_cold_starts_total", variant="default") == 60
    assert value(samples, "endcap_recommendations_cold_start_share") > 0.4
    alarms_logged = [e for e in log_events(server.stderr_path.read_text()) if e["event"] == "drift_alarm"]
    assert any(e["feature"] == "product.purchases" for e in alarms_logged), alarms_logged


def test_purchases_of_shown_items_are_attributed(served: tuple[RunningServer, int]) -> None:
    server, port = served
    shown = ask(server, ["u7"])[0]
    with grpc.insecure_channel(server.target) as channel:
        pb_grpc.RecommendationServiceStub(channel).RecordEvents(
            pb.RecordEventsRequest(
                events=[
                    pb.Event(user_id="u7", item_id=shown.items[0].item_id, type=pb.EVENT_TYPE_PURCHASE),
                    pb.Event(user_id="u7", item_id="never-shown", type=pb.EVENT_TYPE_PURCHASE),
                ]
            ),
            timeout=10,
        )
    samples = scrape(port)
    version = shown.model_version
    assert value(samples, "endcap_online_attributed_purchases_total", variant="default", model_version=version) == 1
    assert value(samples, "endcap_online_answers_hit_total", variant="default", model_version=version) == 1
    assert 0 < value(samples, "endcap_online_hit_rate", variant="default", model_version=version) < 1
    assert value(samples, "endcap_events_total", type="purchase") == 2


def test_report_charts_what_the_server_recorded(served: tuple[RunningServer, int], tmp_path: Path) -> None:
    server, _ = served
    ask(server, [f"u{i}" for i in range(10)])
    time.sleep(1.0)  # a few recording intervals
    recording = server.workspace / "monitoring" / "metrics.jsonl"
    assert len(recording.read_text().splitlines()) >= 2
    out = run_cli("monitor", "report", "--out", str(tmp_path / "report"), workspace=server.workspace).stdout
    assert "index.html" in out
    page = (tmp_path / "report" / "index.html").read_text()
    for chart in ("latency.png", "drift.png", "coverage.png", "hit_rate.png"):
        assert f'src="{chart}"' in page
        assert (tmp_path / "report" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Feature and score drift" in page and "Online hit rate" in page


def test_opentelemetry_spans_per_stage_when_enabled(synthetic_workspace: Path) -> None:
    from endcap.config import EndcapConfig, ServingConfig
    from endcap.features.store import OnlineFeatures
    from endcap.plugin_host import PluginHost
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline
    from endcap.workspace import Workspace
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    workspace = Workspace(synthetic_workspace)
    online = OnlineFeatures(workspace)
    model = load_serving_model(workspace, PluginHost(EndcapConfig()), online)

    Pipeline(model, online.user, ServingConfig()).recommend(Query("u1", model.user_index["u1"], 5), "off")
    assert exporter.get_finished_spans() == ()  # off by default

    Pipeline(model, online.user, ServingConfig(opentelemetry=True)).recommend(
        Query("u1", model.user_index["u1"], 5), "r-otel"
    )
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = spans["endcap.recommend"]
    assert root.attributes["endcap.request_id"] == "r-otel"
    for stage in ("user_features", "candidates", "merge", "filter", "features", "rank", "top_k"):
        child = spans[f"endcap.{stage}"]
        assert child.parent.span_id == root.context.span_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time


def test_importing_feast_leaves_prometheus_metrics_in_memory() -> None:
    """Feast sets PROMETHEUS_MULTIPROC_DIR on import; through endcap.features.store our metrics stay
    in process memory and the variable does not leak into the server's child processes."""
    script = (
        "import os, endcap.features.store\n"
        "from prometheus_client import values\n"
        "print(values.ValueClass.__name__, 'PROMETHEUS_MULTIPROC_DIR' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if "PROMETHEUS" not in k}
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert output.stdout.split() == ["MutexValue", "False"], output.stdout + output.stderr


def test_the_monitor_feed_delivers_in_order_and_outlives_a_failed_delivery() -> None:
    from endcap.monitoring.feed import MonitorFeed

    delivered: list[tuple[str, tuple[object, ...]]] = []

    def deliver(hook: str, args: tuple[object, ...]) -> None:
        if hook == "on_broken":
            raise RuntimeError("a monitor's logger is gone")
        delivered.append((hook, args))

    feed = MonitorFeed(deliver, capacity=2)
    for i in range(5):  # more than the capacity: a submit waits for room rather than dropping a record
        feed.submit("on_broken" if i == 2 else "on_call", i)
    assert feed.flush(timeout=5)
    assert delivered == [("on_call", (0,)), ("on_call", (1,)), ("on_call", (3,)), ("on_call", (4,))]


def test_call_threads_deliver_one_at_a_time_in_order_without_waiting_for_the_feed() -> None:
    from endcap.monitoring.feed import MonitorFeed

    delivered: list[tuple[int, int]] = []
    inside = threading.Lock()
    overlaps = 0

    def deliver(hook: str, args: tuple[object, ...]) -> None:
        nonlocal overlaps
        if not inside.acquire(blocking=False):
            overlaps += 1
            return
        try:
            delivered.append(args)  # type: ignore[arg-type]
            time.sleep(0)
        finally:
            inside.release()

    feed = MonitorFeed(deliver, interval=3600)  # the feed's own thread stays asleep
    feed.submit("on_call", 0, 0)
    feed.submit("on_call", 0, 1)
    feed.drain(limit=1)
    assert delivered == [(0, 0)]  # at once, on this thread, and no more than asked

    def call_thread(caller: int) -> None:
        for i in range(200):
            feed.submit("on_call", caller, i)
            feed.drain()

    threads = [threading.Thread(target=call_thread, args=(caller,)) for caller in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    feed.drain(limit=1000)
    assert overlaps == 0
    assert len(delivered) == 602
    for caller in (0, 1, 2, 3):
        mine = [i for c, i in delivered if c == caller]
        assert mine == sorted(mine) and len(mine) == (2 if caller == 0 else 200)


def test_log_lines_go_out_in_whole_line_chunks_and_warnings_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import select

    from endcap.logs import LineBatcher

    writes: list[str] = []

    class Stderr:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    batcher = LineBatcher()
    lines = [f'{{"event": "recommend", "i": {i}, "pad": "{"x" * 300}"}}\n' for i in range(40)]
    for line in lines:
        batcher.write_soon(line)
    assert 0 < len(writes) < 10  # a system call per chunk, not per line
    assert all(len(chunk.encode()) <= select.PIPE_BUF and chunk.endswith("\n") for chunk in writes)
    batcher.write_now('{"event": "warned"}\n')
    assert "".join(writes) == "".join(lines) + '{"event": "warned"}\n'  # in order, nothing held back
    batcher.write_soon('{"event": "later"}\n')
    deadline = time.monotonic() + 5
    while writes[-1] != '{"event": "later"}\n' and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes[-1] == '{"event": "later"}\n'  # a quiet server's last line still goes out


def test_a_request_line_rendered_directly_is_the_line_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import structlog
    from endcap.logs import configure_logging, flush_logs, info_line
    from structlog.testing import capture_logs

    fields = {"request_id": "r1", "k": 10, "candidates": {"als": 100, 7: 1}, "score": np.float32(0.5), "x": object}
    try:
        configure_logging()
        logger = structlog.get_logger("endcap.requests")
        logger.info("recommend", **fields)
        info_line(logger, "recommend", dict(fields))
        flush_logs()
        via_structlog, direct = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert via_structlog["timestamp"] <= direct.pop("timestamp") and via_structlog.pop("timestamp")
        assert list(direct.items()) == list(via_structlog.items())  # same keys, same order, same values
        assert direct["score"] == 0.5 and direct["candidates"] == {"als": 100, "7": 1}

        configure_logging()
        with capture_logs() as captured:  # structlog configured otherwise: the line goes through it
            info_line(structlog.get_logger("endcap.requests"), "recommend", dict(fields))
        assert [line["event"] for line in captured] == ["recommend"]

        configure_logging(json_lines=False)  # the console renderer: the line goes through structlog
        info_line(structlog.get_logger("endcap.requests"), "recommend", dict(fields))
        flush_logs()
        console = capsys.readouterr().err
        assert "recommend" in console and not console.startswith("{")
    finally:
        configure_logging()
