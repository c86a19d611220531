"""Each part of the serving package alone, with real workspaces, models and stores: the model
lifecycle, the event path, the monitors' hooks, the ``/metrics`` endpoint, request validation,
SimilarItems, the ranking feature layout and isolated component calls."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import pytest
from conftest import prepared_workspace
from endcap.config import ComponentBlock, EndcapConfig, LimitsConfig, MetricsConfig, ServingConfig
from endcap.data.events import EventLog
from endcap.errors import FailedPrecondition, InvalidArgument, NotFound
from endcap.features.store import OnlineFeatures
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.serving.component_calls import ComponentCalls
from endcap.serving.event_path import EventPath
from endcap.serving.metrics_endpoint import MetricsEndpoint
from endcap.serving.model import ServingModel, load_serving_model
from endcap.serving.model_lifecycle import ModelLifecycle
from endcap.serving.monitor_hooks import MonitorHooks
from endcap.serving.ranking_layout import RankingLayout
from endcap.serving.requests import EventInput, RequestValidator
from endcap.serving.similar_items import SimilarItems
from endcap.training.fit import train
from endcap.types import Event, Monitor, Query
from endcap.workspace import Workspace


@pytest.fixture(scope="module")
def online(synthetic_workspace: Path) -> OnlineFeatures:
    return OnlineFeatures(Workspace(synthetic_workspace))


@pytest.fixture(scope="module")
def model(synthetic_workspace: Path, online: OnlineFeatures) -> ServingModel:
    config = EndcapConfig()
    return load_serving_model(Workspace(synthetic_workspace), PluginHost(config), online)


def model_with(workspace: Path, online: OnlineFeatures, **config: Any) -> ServingModel:
    """The synthetic workspace's current model, loaded with another configuration's components."""
    return load_serving_model(Workspace(workspace), PluginHost(EndcapConfig(**config)), online)


# -- model lifecycle ---------------------------------------------------------------------------


def test_lifecycle_switches_to_a_promoted_version_and_keeps_serving_through_a_broken_one(tmp_path: Path) -> None:
    workspace = prepared_workspace(tmp_path, users=15, items=20, baskets=4)
    config = EndcapConfig()
    host = PluginHost(config)
    first = train(workspace, host)
    second = train(workspace, host, promote=False)
    broken = train(workspace, host, promote=False)
    registry = ModelRegistry(workspace.models)
    lifecycle = ModelLifecycle(workspace, config, host, OnlineFeatures(workspace))
    assert lifecycle.model.version == first.version
    assert lifecycle.reload() is False, "nothing was promoted: nothing to switch to"

    registry.set_current(second.version)
    assert lifecycle.reload() is True
    served = lifecycle.served
    assert served.model.version == served.similar.model.version == second.version
    assert all(p.model.version == second.version for p in lifecycle.pipelines.values())
    assert lifecycle.retired.release(), "no request holds the first model: it is released"

    artifact = registry.path(broken.version) / "components" / "candidates" / "popularity" / "popularity.npz"
    artifact.write_bytes(artifact.read_bytes()[:-8] + b"\x00" * 8)
    registry.set_current(broken.version)
    assert lifecycle.reload() is False
    assert lifecycle.served is served and lifecycle.model.version == second.version
    answer, _ = served.pipeline.recommend(served.pipeline.make_query("u1", 5))
    assert len(answer.item_ids) == 5 and answer.model_version == second.version

    registry.set_current(first.version)  # the watch picks a promotion up on its own
    stop = threading.Event()
    watch = lifecycle.watch_registry(0.05, stop)
    try:
        deadline = time.monotonic() + 60
        while lifecycle.model.version != first.version and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        watch.join(timeout=10)
    assert lifecycle.model.version == first.version
    assert not watch.is_alive()


# -- event path --------------------------------------------------------------------------------


def test_event_path_repairs_a_torn_line_then_appends_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "events" / "events.jsonl"
    EventLog(path).append([Event("u1", "i1", "purchase", 1, 1.0)])
    with path.open("ab") as handle:
        handle.write(b'{"user_id":"u1","ite')  # a writer that died half-way through its record
    events = EventPath.open(path, online=None)
    assert path.read_bytes().endswith(b"}\n")
    [aside] = path.parent.glob("events.jsonl.torn-*")
    assert aside.read_bytes() == b'{"user_id":"u1","ite'
    assert events.repair() == 0, "a whole log has nothing to cut"

    batch = [Event("u2", "i2", "purchase", 2, 2.0, event_id="e-1"), Event("u2", "i3", "view", 1, 3.0)]
    assert events.record(batch) == tuple(batch)
    assert events.record(batch[:1]) == (), "a retried event id is not written again"
    assert [(e.user_id, e.item_id, e.quantity) for e in EventLog(path).read()] == [
        ("u1", "i1", 1),
        ("u2", "i2", 2),
        ("u2", "i3", 1),
    ]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_event_path_pushes_purchases_to_the_users_online_row(tmp_path: Path) -> None:
    workspace = prepared_workspace(tmp_path, users=10, items=15, baskets=3)
    online = OnlineFeatures(workspace)
    before, other = online.user("u1"), online.user("u2")
    staple = before["item_ids"][0]
    events = EventPath.open(workspace.events_log, online)
    events.record([Event("u1", staple, "purchase", 1, time.time()), Event("u1", "i14", "view", 1, time.time())])
    after = online.user("u1")
    assert after["orders"] == before["orders"] + 1
    assert after["times_bought"][after["item_ids"].index(staple)] == before["times_bought"][0] + 1
    assert online.user("u2") == other, "another user's row is as it was"
    assert len(list(EventLog(workspace.events_log).read())) == 2


# -- monitors and /metrics ---------------------------------------------------------------------


class RecordingMonitor(endcap.Monitor):
    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self.calls: list[tuple[str, str, float]] = []

    def on_call(self, method: str, code: str, seconds: float) -> None:
        self.calls.append((method, code, seconds))


class BrokenMonitor(endcap.Monitor):
    def on_call(self, method: str, code: str, seconds: float) -> None:
        raise RuntimeError("disk full")


def test_monitor_hooks_deliver_in_order_past_a_monitor_that_raises() -> None:
    recording = RecordingMonitor("recording", None)
    monitors: Mapping[str, Monitor] = {"broken": BrokenMonitor("broken", None), "recording": recording}
    hooks = MonitorHooks(lambda: monitors)
    for n in range(5):
        hooks.notify("on_call", "Recommend", "OK", float(n))
    assert hooks.feed.flush()
    assert recording.calls == [("Recommend", "OK", float(n)) for n in range(5)]


def test_metrics_endpoint_answers_a_scrape_with_prometheus_text(
    synthetic_workspace: Path, online: OnlineFeatures
) -> None:
    monitors = model_with(synthetic_workspace, online).components.monitors
    hooks = MonitorHooks(lambda: monitors)
    endpoint = MetricsEndpoint(monitors, hooks.feed, MetricsConfig())
    port = endpoint.expose("127.0.0.1", 0)
    hooks.notify("on_call", "Recommend", "OK", 0.004)
    hooks.notify("on_events", (Event("u1", "i1", "purchase", 1, 1.0), Event("u1", "i2", "purchase", 1, 1.0)))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    assert "# TYPE endcap_requests_total counter" in text
    assert 'endcap_requests_total{code="OK",method="Recommend"} 1.0' in text, "the scrape saw the call before it"
    assert 'endcap_events_total{type="purchase"} 2.0' in text
    assert endpoint.text().decode().count("endcap_requests_total{") == 1


def test_metrics_endpoint_behind_a_token_refuses_a_scrape_without_it(
    synthetic_workspace: Path, online: OnlineFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENDCAP_TEST_METRICS_TOKEN", "s3cret-token-of-enough-length")
    monitors = model_with(synthetic_workspace, online).components.monitors
    config = MetricsConfig(token_env="ENDCAP_TEST_METRICS_TOKEN")
    endpoint = MetricsEndpoint(monitors, MonitorHooks(lambda: monitors).feed, config)
    url = f"http://127.0.0.1:{endpoint.expose('127.0.0.1', 0)}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret-token-of-enough-length"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert b"# HELP endcap_requests_total" in response.read()


# -- request validation ------------------------------------------------------------------------


@pytest.fixture
def validator() -> RequestValidator:
    return RequestValidator(ServingConfig(), LimitsConfig(max_id_length=16, max_exclude_items=3))


def test_validator_names_the_field_and_the_limit(validator: RequestValidator) -> None:
    with pytest.raises(InvalidArgument, match="user_id is required and must not be blank"):
        validator.check_recommend(" ", [], {})
    too_long = r"exclude_item_ids\[1\] is 20 characters; the limit \(limits.max_id_length\) is 16"
    with pytest.raises(InvalidArgument, match=too_long):
        validator.check_recommend("u1", ["i1", "x" * 20], {})
    too_many = r"exclude_item_ids has 4 ids; the limit \(limits.max_exclude_items\) is 3"
    with pytest.raises(InvalidArgument, match=too_many):
        validator.check_similar("i1", ["a", "b", "c", "d"])
    with pytest.raises(InvalidArgument, match="item_id is 17 characters"):
        validator.check_similar("y" * 17, [])
    with pytest.raises(InvalidArgument, match=r"k must be between 1 and 1000 \(0 means 10\); got 1001"):
        validator.k(1001)
    assert validator.k(0) == 10 and validator.k(7) == 7
    validator.check_recommend("u1", ["i1", "i2"], {"page": "home"})  # within every limit


def test_validator_refuses_a_batch_naming_the_event_and_its_field(validator: RequestValidator) -> None:
    good = EventInput("u1", "i1", "purchase", 0, None)
    cases = {
        r"events\[1\]\.type must be one of PURCHASE, ADD_TO_CART, VIEW": EventInput("u1", "i1", "<7>", 1, None),
        r"events\[1\]\.quantity must not be negative; got -2": EventInput("u1", "i1", "view", -2, None),
        r"events\[1\]\.timestamp must be between 1970 and 2100": EventInput("u1", "i1", "view", 1, 5e9),
        r"events\[1\]\.item_id is required": EventInput("u1", "", "view", 1, None),
        r"events\[1\]\.event_id is 20 characters": EventInput("u1", "i1", "view", 1, None, "e" * 20),
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            validator.events([good, bad])
    with pytest.raises(InvalidArgument, match="events is empty"):
        validator.events([])
    [event] = validator.events([good], now=123.0)
    assert event == Event("u1", "i1", "purchase", 1, 123.0)  # quantity 0 means 1; no timestamp means now


def test_validator_builds_the_query_in_the_models_indices(model: ServingModel) -> None:
    query = RequestValidator(ServingConfig()).query(model, "u1", 0, ["i3", "not-a-product", "i3"], {"a": "b"}, "v")
    assert query.k == 10 and query.user_index == model.user_index["u1"] >= 0
    assert query.exclude.tolist() == [int(model.item_indices(["i3"])[0])]
    assert query.context == {"a": "b"} and query.variant == "v"
    assert RequestValidator(ServingConfig()).query(model, "stranger", 3).user_index == -1
    with pytest.raises(InvalidArgument, match="user_id is required"):
        RequestValidator(ServingConfig()).query(model, "", 3)


# -- SimilarItems ------------------------------------------------------------------------------


def test_similar_items_for_a_known_item(model: ServingModel) -> None:
    similar = SimilarItems(model, ServingConfig())
    item_ids, scores = similar.answer("i0", 5, ["i1"])
    assert len(item_ids) == len(set(item_ids)) == 5
    assert "i0" not in item_ids and "i1" not in item_ids
    assert scores.shape == (5,) and (np.diff(scores) <= 1e-6).all()
    assert len(similar.answer("i0", 0)[0]) == 10  # k 0 means the default
    with pytest.raises(NotFound, match="item 'nope' is not in the catalogue of model"):
        similar.answer("nope", 5)
    with pytest.raises(InvalidArgument, match="item_id is required"):
        similar.answer("", 5)


def test_similar_items_apply_the_models_filters_and_name_a_source_without_support(
    synthetic_workspace: Path, online: OnlineFeatures, model: ServingModel
) -> None:
    usual, _ = SimilarItems(model, ServingConfig()).answer("i0", 5)
    blocked = list(usual[:2])
    recalled = {"recalled": ComponentBlock(type="blocklist", item_ids=blocked)}
    filtered = model_with(synthetic_workspace, online, filters=recalled)
    item_ids, _ = SimilarItems(filtered, ServingConfig()).answer("i0", 5)
    assert item_ids == usual[2:], "the recalled items are left out (the source is not asked for more)"
    with pytest.raises(FailedPrecondition, match=r"serving\.similar_items_source is 'popularity'"):
        SimilarItems(model, ServingConfig(similar_items_source="popularity")).answer("i0", 5)


# -- ranking feature layout --------------------------------------------------------------------


def test_ranking_layout_columns_and_the_users_purchase_counts(model: ServingModel, online: OnlineFeatures) -> None:
    layout = RankingLayout(("als", "popularity"), model.components.features, model.provider_products)
    assert layout.names[:2] == ("source.als", "source.popularity")
    assert layout.names[2:6] == (
        "user.orders",
        "user.avg_basket_size",
        "user.avg_days_between_orders",
        "user.distinct_items",
    )
    assert layout.names[6:9] == ("product.purchases", "product.distinct_buyers", "product.reorder_rate")
    assert layout.names[9:12] == (
        "user_product.times_bought",
        "user_product.bought_share",
        "user_product.orders_since_last_bought",
    )
    assert layout.names[12:15] == ("cadence.interval_orders", "cadence.due_ratio", "cadence.rate_since_first")
    calendar = ("days_since_last_order", "order_due", "days_since_bought", "item_due")
    assert layout.names[15:] == tuple(f"calendar.{name}" for name in calendar)
    user = model.user_features(online.user("u2"))
    bought = user.items[:2]
    never = np.setdiff1d(np.arange(model.catalog.n_items, dtype=np.int32), user.items)[:1]
    ids = np.sort(np.concatenate([bought, never])).astype(np.int32)
    scores = np.full((ids.size, 2), 0.5, dtype=np.float32)
    errors: dict[str, str] = {}
    matrix = layout.matrix(Query("u2", model.user_index["u2"], 3), ids, scores, user, ComponentCalls(), errors)
    assert errors == {}
    assert matrix.values.shape == (3, len(layout.names)) and matrix.ids.tolist() == ids.tolist()
    orders = user.stats["orders"]
    times = matrix.column("user_product.times_bought")
    for row, item in enumerate(ids.tolist()):
        expected = user.item_stats["times_bought"][user.items.tolist().index(item)] if item in bought else 0.0
        assert times[row] == pytest.approx(expected)
    np.testing.assert_allclose(matrix.column("user_product.bought_share"), times / orders, rtol=1e-6)
    assert matrix.column("user.orders").tolist() == [orders] * 3
    np.testing.assert_array_equal(matrix.values[:, 6:9], np.nan_to_num(model.provider_products["product"][ids]))
    # the calendar measures from the query's time, else from the newest day the model's data knows
    month_later = layout.matrix(
        Query("u2", model.user_index["u2"], 3, as_of=(user.stats["last_order_day"] + 30) * 86_400.0),
        ids,
        scores,
        user,
        ComponentCalls(),
        errors,
    )
    np.testing.assert_allclose(month_later.column("calendar.days_since_last_order"), 30.0, rtol=1e-6)
    since = matrix.column("calendar.days_since_last_order")
    assert (since >= 0).all() and (since < 30).all()
    with pytest.raises(ValueError, match="read-only"):
        matrix.values[0, 0] = 1.0


# -- isolated component calls ------------------------------------------------------------------


class SlowFilter(endcap.Filter):
    def keep(self, query: Any, ids: Any) -> Any:
        time.sleep(0.02)
        return np.ones(ids.size, dtype=bool)


def test_component_calls_drop_what_raises_or_overruns_and_count_it() -> None:
    calls = ComponentCalls(budgets=True)
    component = SlowFilter("slow", ComponentBlock(type="slow", budget_ms=5))
    errors: dict[str, str] = {}

    def fail() -> int:
        raise RuntimeError("upstream timed out")

    assert calls.run("flaky", component, errors, fail) is None
    assert errors["flaky"] == "RuntimeError: upstream timed out"
    assert calls.run("slow", component, errors, lambda: component.keep(None, np.arange(2))) is None
    assert errors["slow"].startswith("over budget:") and "> 5 ms" in errors["slow"]
    assert calls.run("fast", component, errors, lambda: 42) == 42 and "fast" not in errors
    assert calls.failures == {"flaky": 1, "slow": 1}
    offline = ComponentCalls(budgets=False)
    assert offline.run("slow", component, {}, lambda: component.keep(None, np.arange(2))) is not None
    assert not offline.failures
