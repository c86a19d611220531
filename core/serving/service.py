"""The service behind the gRPC API, in domain types. The servicer translates protobuf to these
calls and back; nothing else does.

:class:`RecommendationService` composes one part per job: the request validator
(:mod:`endcap.serving.requests`), the model lifecycle (:mod:`endcap.serving.model_lifecycle`:
load, poll, switch, warm-up, the collector), the event path (:mod:`endcap.serving.event_path`:
the event log and real-time features), the monitors' hooks (:mod:`endcap.serving.monitor_hooks`)
and the ``/metrics`` endpoint (:mod:`endcap.serving.metrics_endpoint`). Experiments are routed
here (:mod:`endcap.serving.experiments`)."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

from endcap.config import EndcapConfig
from endcap.plugin_host import PluginHost
from endcap.serving.event_path import EventPath
from endcap.serving.experiments import choose
from endcap.serving.metrics_endpoint import MetricsEndpoint
from endcap.serving.model import ServingModel
from endcap.serving.model_lifecycle import ModelLifecycle
from endcap.serving.monitor_hooks import MonitorHooks
from endcap.serving.online_store import OnlineStore
from endcap.serving.pipeline import Pipeline, Recommendation
from endcap.serving.requests import LATEST_TIMESTAMP, EventInput, RequestValidator
from endcap.types import Monitor, Query, ScoreArray
from endcap.workspace import Workspace

__all__ = ["LATEST_TIMESTAMP", "EventInput", "RecommendationService"]


class RecommendationService:
    """Recommend, SimilarItems and RecordEvents for one workspace (see the module docstring)."""

    def __init__(self, workspace: Workspace, config: EndcapConfig, host: PluginHost, online: OnlineStore) -> None:
        self.workspace = workspace
        self.config = config
        self.host = host
        self.online = online
        self.requests = RequestValidator(config.serving, config.limits)
        self.event_path = EventPath.open(workspace.events_log, online if config.serving.realtime_features else None)
        self.lifecycle = ModelLifecycle(workspace, config, host, online)
        self.retired = self.lifecycle.retired
        """Models switched away from, until the collector has released them."""
        self.monitors = MonitorHooks(self._serving_monitors)
        self.monitor_feed = self.monitors.feed
        """Monitor hooks run on a thread of their own, off the request path (see :meth:`notify`)."""
        self.metrics_endpoint = MetricsEndpoint(self.model.components.monitors, self.monitor_feed, config.metrics)
        self.metrics = self.metrics_endpoint.registry
        """Every monitor's collectors; served by :meth:`expose_metrics`, recorded by ``recorder``."""

    def _serving_monitors(self) -> Mapping[str, Monitor]:
        return self.lifecycle.model.components.monitors

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        """The model version being served, one pipeline per experiment variant."""
        return self.lifecycle.pipelines

    @property
    def pipeline(self) -> Pipeline:
        """The default pipeline (the first variant's)."""
        return self.lifecycle.served.pipeline

    @property
    def model(self) -> ServingModel:
        return self.lifecycle.model

    def reload(self, version: str | None = None) -> bool:
        """See :meth:`ModelLifecycle.reload`."""
        return self.lifecycle.reload(version)

    def watch_registry(self, interval: float, stop: threading.Event) -> threading.Thread:
        """See :meth:`ModelLifecycle.watch_registry`."""
        return self.lifecycle.watch_registry(interval, stop)

    def expose_metrics(self, host: str, port: int) -> int:
        """Serve every monitor's Prometheus metrics at ``http://host:port/metrics``, behind the
        token of ``metrics.token_env`` when one is configured; returns the port."""
        return self.metrics_endpoint.expose(host, port)

    def notify(self, method: str, *args: object) -> None:
        """Call hook ``method`` of every monitor, after the caller has been answered: the call is
        queued and delivered in order on the monitors' own thread."""
        self.monitors.notify(method, *args)

    def recommend(
        self,
        request_id: str,
        user_id: str,
        k: int,
        exclude_item_ids: Sequence[str],
        context: Mapping[str, str],
        variant: str,
        as_of: float = math.nan,
    ) -> Recommendation:
        query: Query | None = None
        try:
            self.requests.check_recommend(user_id, exclude_item_ids, context)
            pipelines = self.lifecycle.pipelines  # one version for the whole request
            chosen = choose(pipelines, self.config, user_id, variant)
            pipeline = pipelines[chosen]
            query = pipeline.make_query(user_id, k, exclude_item_ids, context, chosen, as_of)
            answer, record = pipeline.recommend(query, request_id)
        except Exception as exc:
            self.notify("on_error", request_id, query, exc)
            raise
        self.notify("on_request", record)
        return answer

    def similar_items(
        self, item_id: str, k: int, exclude_item_ids: Sequence[str]
    ) -> tuple[tuple[str, ...], ScoreArray, str]:
        """Similar items, their scores, and the model version that answered."""
        self.requests.check_similar(item_id, exclude_item_ids)
        similar = self.lifecycle.served.similar  # one version for the whole request
        item_ids, scores = similar.answer(item_id, k, exclude_item_ids)
        return item_ids, scores, similar.model.version

    def record_events(self, inputs: Sequence[EventInput]) -> int:
        """Validate every event first; write all of them or none. Returns how many were accepted
        (a retried event, already in the log, is accepted without being written again)."""
        events = self.requests.events(inputs)
        recorded = self.event_path.record(events)
        self.notify("on_events", recorded)
        return len(events)
