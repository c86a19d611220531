"""``prometheus``: service metrics for ``endcap serve --metrics-port``.

Requests and latency by RPC; per-stage latency, fallbacks and cold starts by variant;
candidates per source; dropped components by reason; feature-store read latency and misses;
events by type; the loaded model version as an info metric.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

import endcap
from prometheus_client import Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CANDIDATE_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000)


class RequestHistograms:
    """Histograms with one label set per series, observed many at a time under one lock: a
    request's stage timings or candidate counts cost one lock and a binary search per value,
    where prometheus-client's ``Histogram`` takes a lock and a Python loop over the buckets per
    value. Exposed exactly like a ``Histogram`` (``_bucket``, ``_count``, ``_sum``)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}
        """Per label set: a count per bucket (the last is +Inf), then the sum."""
        self._lock = threading.Lock()

    def observe(self, values: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """Observe each ``(label values, value)`` pair."""
        bounds, width = self.bounds, len(self.bounds) + 1
        with self._lock:
            for labels, value in values:
                series = self._series.get(labels)
                if series is None:
                    series = self._series[labels] = [0.0] * (width + 1)
                series[bisect_left(bounds, value)] += 1
                series[width] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        with self._lock:
            series = {labels: list(counts) for labels, counts in self._series.items()}
        edges = [*(_bound(b) for b in self.bounds), "+Inf"]
        for labels, counts in series.items():
            cumulative, total = [], 0.0
            for edge, count in zip(edges, counts, strict=False):
                total += count
                cumulative.append((edge, total))
            family.add_metric(list(labels), cumulative, counts[-1])
        yield family


def _bound(value: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.5``, ``1.0``, ``10.0``)."""
    return repr(float(value))


class ServiceMetricsConfig(endcap.ComponentConfig):
    pass


class ServiceMetrics(endcap.Monitor):
    Config = ServiceMetricsConfig

    def __init__(self, name: str, config: ServiceMetricsConfig) -> None:
        super().__init__(name, config)
        self.enabled = False
        self._version = ""

    def register_metrics(self, registry: Any) -> None:
        self.requests = Counter(
            "endcap_requests", "API calls by method and gRPC status", ["method", "code"], registry=registry
        )
        self.latency = RequestHistograms(
            "endcap_request_duration_seconds", "API call latency", ("method",), LATENCY_BUCKETS
        )
        self.stages = RequestHistograms(
            "endcap_stage_duration_seconds",
            "Recommend pipeline stage latency",
            ("stage", "variant"),
            LATENCY_BUCKETS,
        )
        self.candidates = RequestHistograms(
            "endcap_candidates_per_request", "Candidates a source proposed", ("source",), CANDIDATE_BUCKETS
        )
        self.feature_reads = RequestHistograms(
            "endcap_feature_store_read_duration_seconds", "Online feature read per request", (), LATENCY_BUCKETS
        )
        for histograms in (self.latency, self.stages, self.candidates, self.feature_reads):
            registry.register(histograms)
        self.failures = Counter(
            "endcap_component_failures",
            "Component calls dropped from a request",
            ["component", "reason"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "endcap_fallbacks", "Requests served by the fallback source", ["variant"], registry=registry
        )
        self.cold_starts = Counter(
            "endcap_cold_starts",
            "Requests for users unknown to the model and the feature store",
            ["variant"],
            registry=registry,
        )
        self.online_misses = Counter(
            "endcap_online_feature_misses",
            "Requests for users the model knows but the online store holds no row for (answered from the model)",
            ["variant"],
            registry=registry,
        )
        self.feature_misses = Counter(
            "endcap_feature_store_misses", "Online reads that found no user row", registry=registry
        )
        self.events = Counter("endcap_events", "Events recorded", ["type"], registry=registry)
        self.model = Gauge(
            "endcap_model_info", "The model version being served (value 1)", ["version"], registry=registry
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.enabled = True

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the per-request path skips prometheus-client's
        label validation and locking on every observation."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_call(self, method: str, code: str, seconds: float) -> None:
        if self.enabled:
            self._child(self.requests, method, code).inc()
            self.latency.observe((((method,), seconds),))

    def on_request(self, record: endcap.RequestRecord) -> None:
        if not self.enabled:
            return
        variant = record.query.variant or "default"
        self.stages.observe(((stage, variant), ms / 1000.0) for stage, ms in record.timings.ms.items())
        self.candidates.observe(((source,), count) for source, count in record.candidates_per_source.items())
        for component, reason in record.errors.items():
            self.failures.labels(component, "over_budget" if reason.startswith("over budget") else "error").inc()
        if record.fallback:
            self.fallbacks.labels(variant).inc()
        if record.cold_start:
            self.cold_starts.labels(variant).inc()
            self.feature_misses.inc()
        elif record.online_miss:
            self.online_misses.labels(variant).inc()
            self.feature_misses.inc()
        read_seconds = record.timings.ms.get("user_features", 0.0) / 1000.0
        self.feature_reads.observe((((), read_seconds),))
        if record.model_version != self._version:
            if self._version:
                self.model.remove(self._version)
            self.model.labels(record.model_version).set(1)
            self._version = record.model_version

    def on_events(self, events: tuple[endcap.Event, ...]) -> None:
        if self.enabled:
            for event in events:
                self.events.labels(event.type).inc()


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(ServiceMetrics, type_name="prometheus")
