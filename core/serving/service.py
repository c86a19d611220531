"""The service behind the gRPC API, in domain types: one loaded model, its pipeline, monitors,
the event log. The servicer translates protobuf to these calls and back; nothing else does."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from endcap.config import EndcapConfig, LimitsConfig
from endcap.data.events import EVENT_TYPES, EventLog
from endcap.errors import EndcapError, InvalidArgument
from endcap.features.coverage import check_model_against_store
from endcap.features.realtime import RealtimeFeatures
from endcap.model_versions import ModelRegistry
from endcap.monitoring.feed import FlushBeforeCollect, MonitorFeed
from endcap.plugin_host import PluginHost
from endcap.serving.experiments import choose, variant_pipelines
from endcap.serving.limits import check_event_count, check_id, check_items_and_context
from endcap.serving.memory import RetiredModels, freeze_survivors
from endcap.serving.model import ServingModel, load_newest_sound_model, load_serving_model
from endcap.serving.pipeline import Pipeline, Recommendation
from endcap.types import Event, Query
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.service")

LATEST_TIMESTAMP = 4_102_444_800.0  # 2100-01-01


@dataclass(frozen=True)
class EventInput:
    """An event as received, before validation."""

    user_id: str
    item_id: str
    type: str
    quantity: int
    timestamp: float | None
    event_id: str = ""


class RecommendationService:
    def __init__(self, workspace: Workspace, config: EndcapConfig, host: PluginHost, online: Any) -> None:
        self.workspace = workspace
        self.config = config
        self.host = host
        self.online = online
        self.events = EventLog(workspace.events_log)
        self.events.repair()
        self.realtime = (
            RealtimeFeatures(online.user_row, online.push, online.row_lock())
            if config.serving.realtime_features
            else None
        )
        model = load_newest_sound_model(workspace, host, online)
        self.pipelines = _warmed_up(variant_pipelines(model, online, config))
        """The model version being served, one pipeline per experiment variant; swapped whole by
        :meth:`reload`; a request reads it once, so every answer comes from one version."""
        self.retired = RetiredModels()
        """Models switched away from, until the collector has released them (see :meth:`reload`)."""
        freeze_survivors()
        self._reload_lock = threading.Lock()
        self._refused: tuple[str, int] | None = None
        """The version last refused and the store's :meth:`_store_stamp` then: tried again only
        once the store changed (an ``endcap features`` run can make a refused version fit)."""
        self.monitor_feed = MonitorFeed(self._deliver)
        """Monitor hooks run on a thread of their own, off the request path (see :meth:`notify`)."""
        self.metrics = self._register_metrics()
        """Every monitor's collectors; served by :meth:`expose_metrics`, recorded by ``recorder``."""

    @property
    def pipeline(self) -> Pipeline:
        """The default pipeline (the first variant's)."""
        return next(iter(self.pipelines.values()))

    @property
    def model(self) -> ServingModel:
        return self.pipeline.model

    def reload(self, version: str | None = None) -> bool:
        """Load ``version`` (default: the registry's current) beside the serving one, then switch to
        it in one assignment. Monitors carry over (reloaded with the new version's state). A version
        that fails to load is refused, logged, and the serving one stays; returns whether it switched.

        The previous model is released once its last request is done: it is handed to
        :attr:`retired`, which collects it (with the collector's permanent generation opened, so
        reference cycles frozen at start-up are found too) and freezes what survives only once
        no retired model is left; :meth:`watch_registry` retries while a request still holds it."""
        with self._reload_lock:
            registry = ModelRegistry(self.workspace.models)
            target = version or registry.current()
            if target is None or target == self.model.version or self._refused == (target, self._store_stamp()):
                return False
            try:
                model = load_serving_model(
                    self.workspace, self.host, self.online, target, monitors=self.model.components.monitors
                )
                check_model_against_store(model, self.online.user)
            except EndcapError as exc:
                if self._refused is None or self._refused[0] != target:
                    log.error("reload_refused", version=target, serving=self.model.version, reason=str(exc))
                self._refused = (target, self._store_stamp())
                return False
            previous = self.model
            self.pipelines = _warmed_up(variant_pipelines(model, self.online, self.config))
            self.retired.add(previous)
            log.info("model_switched", version=target, previous=previous.version)
            del previous, model  # this frame's references, before the collection
            self.retired.release()
            return True

    def _store_stamp(self) -> int:
        """When ``endcap features`` last finished (``materialized.json``'s modification time)."""
        try:
            return (self.workspace.feast / "materialized.json").stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def watch_registry(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Poll the registry's CURRENT pointer and :meth:`reload` when it moves (``endcap promote``)."""

        def poll() -> None:
            registry = ModelRegistry(self.workspace.models)
            while not stop.wait(interval):
                current = registry.current()
                if current is not None and current != self.model.version and self.reload(current):
                    continue  # (a version refused before is tried again once the store changed)
                if self.retired:
                    self.retired.release()  # a request held the previous model at the switch

        thread = threading.Thread(target=poll, name="endcap-model-watch", daemon=True)
        thread.start()
        return thread

    def _register_metrics(self) -> Any:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(FlushBeforeCollect(self.monitor_feed))
        for name, monitor in self.model.components.monitors.items():
            try:
                monitor.register_metrics(registry)
            except Exception as exc:
                log.warning(
                    "monitor_failed",
                    monitor=name,
                    hook="register_metrics",
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
        return registry

    def expose_metrics(self, host: str, port: int) -> int:
        """Serve every monitor's Prometheus metrics at ``http://host:port/metrics``, behind the
        token of ``metrics.token_env`` when one is configured; returns the port."""
        from endcap.monitoring.endpoint import metrics_token, serve_metrics

        return serve_metrics(self.metrics, host, port, metrics_token(self.config.metrics))

    def notify(self, method: str, *args: Any) -> None:
        """Call hook ``method`` of every monitor, after the caller has been answered: the call is
        queued and delivered in order on the monitors' own thread."""
        self.monitor_feed.submit(method, *args)

    def _deliver(self, method: str, args: tuple[Any, ...]) -> None:
        for name, monitor in self.model.components.monitors.items():
            try:
                getattr(monitor, method)(*args)
            except Exception as exc:  # monitors observe; they never break a request
                log.warning(
                    "monitor_failed", monitor=name, hook=method, error=f"{type(exc).__name__}: {exc}", exc_info=exc
                )

    def recommend(
        self,
        request_id: str,
        user_id: str,
        k: int,
        exclude_item_ids: Sequence[str],
        context: Mapping[str, str],
        variant: str,
    ) -> Recommendation:
        query: Query | None = None
        try:
            check_id("user_id", user_id, self.config.limits)
            check_items_and_context(self.config.limits, exclude_item_ids, context)
            pipelines = self.pipelines  # one version for the whole request
            chosen = choose(pipelines, self.config, user_id, variant)
            pipeline = pipelines[chosen]
            query = pipeline.make_query(user_id, k, exclude_item_ids, context, chosen)
            answer, record = pipeline.recommend(query, request_id)
        except Exception as exc:
            self.notify("on_error", request_id, query, exc)
            raise
        self.notify("on_request", record)
        return answer

    def similar_items(self, item_id: str, k: int, exclude_item_ids: Sequence[str]) -> tuple[Any, Any, str]:
        """Similar items, their scores, and the model version that answered."""
        check_id("item_id", item_id, self.config.limits)
        check_items_and_context(self.config.limits, exclude_item_ids)
        pipeline = self.pipeline
        item_ids, scores = pipeline.similar(item_id, k, exclude_item_ids)
        return item_ids, scores, pipeline.model.version

    def record_events(self, inputs: Sequence[EventInput]) -> int:
        """Validate every event first; write all of them or none."""
        check_event_count(self.config.limits, len(inputs))
        now = time.time()
        events = tuple(_validated(i, position, now, self.config.limits) for position, i in enumerate(inputs))
        recorded = self.events.record(events)  # less events a retried call already recorded (event_id)
        if self.realtime is not None:
            try:
                self.realtime.apply(recorded)
            except Exception as exc:  # the events are logged; the next retrain still learns from them
                log.error(
                    "realtime_update_failed",
                    events=len(recorded),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
        self.notify("on_events", recorded)
        return len(events)


def _warmed_up(pipelines: dict[str, Pipeline], users: int = 20, seconds: float = 1.0) -> dict[str, Pipeline]:
    """Run a few requests through each pipeline before it serves (first calls fill caches and
    allocate buffers), for at most ``seconds`` in all."""
    stop_at = time.monotonic() + seconds
    for pipeline in pipelines.values():
        for user_id in pipeline.model.catalog.user_ids[:users].tolist():
            if time.monotonic() > stop_at:
                break
            try:
                pipeline.recommend(pipeline.make_query(str(user_id), 0))
            except Exception as exc:  # warm-up is best effort; real requests report their own errors
                log.warning("warm_up_failed", user_id=user_id, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                break
    return pipelines


def _validated(event: EventInput, position: int, now: float, limits: LimitsConfig) -> Event:
    where = f"events[{position}]"
    for field in ("user_id", "item_id"):
        check_id(f"{where}.{field}", getattr(event, field), limits)
    if event.type not in EVENT_TYPES:
        raise InvalidArgument(f"{where}.type must be one of {', '.join(t.upper() for t in EVENT_TYPES)}")
    if len(event.event_id) > limits.max_id_length:
        raise InvalidArgument(
            f"{where}.event_id is {len(event.event_id)} characters; the limit (limits.max_id_length) is "
            f"{limits.max_id_length}"
        )
    if event.quantity < 0:
        raise InvalidArgument(f"{where}.quantity must not be negative; got {event.quantity}")
    if event.timestamp is not None and not 0 <= event.timestamp < LATEST_TIMESTAMP:
        raise InvalidArgument(f"{where}.timestamp must be between 1970 and 2100; got {event.timestamp:.0f} seconds")
    return Event(
        user_id=event.user_id,
        item_id=event.item_id,
        type=event.type,
        quantity=event.quantity or 1,
        timestamp=event.timestamp if event.timestamp is not None else now,
        event_id=event.event_id,
    )
