"""``recommendation_health``: what the answers look like, over the last ``window`` requests.

Catalogue coverage, concentration of recommended items (Gini), and the shares of requests
served to cold-start users, by the fallback, or with short or empty answers — as gauges,
computed when ``/metrics`` is scraped.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from itertools import chain
from typing import Any

import endcap
import numpy as np
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field


def gini(counts: np.ndarray, catalog_size: int | None = None) -> float:
    """0 when every catalogue item is recommended equally often, towards 1 when a few take
    everything; items never recommended count as zeros (``catalog_size`` pads them)."""
    if counts.size == 0 or counts.sum() == 0:
        return 0.0
    missing = max((catalog_size or 0) - counts.size, 0)
    ordered = np.concatenate([np.zeros(missing), np.sort(counts.astype(np.float64))])
    n = ordered.size
    cumulative = np.cumsum(ordered)
    return float((n + 1 - 2 * (cumulative / cumulative[-1]).sum()) / n)


class RecommendationHealthConfig(endcap.ComponentConfig):
    window: int = Field(1000, ge=1)
    """Requests the gauges describe."""


class RecommendationHealth(endcap.Monitor):
    Config = RecommendationHealthConfig
    config: RecommendationHealthConfig

    def __init__(self, name: str, config: RecommendationHealthConfig) -> None:
        super().__init__(name, config)
        self._lock = threading.Lock()
        self._answers: deque[tuple[tuple[str, ...], int, bool, bool]] = deque(maxlen=config.window)
        self.catalog_size = 1

    def load(self, context: endcap.ModelContext) -> None:
        self.catalog_size = max(context.catalog.n_items, 1)

    def on_request(self, record: endcap.RequestRecord) -> None:
        """Keep the answer; everything is counted when the gauges are read (a scrape every few
        seconds counts the window once, instead of every request updating the counts)."""
        with self._lock:
            self._answers.append((record.item_ids, record.query.k, record.cold_start, record.fallback))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            answers = list(self._answers)
        counts = np.array(list(Counter(chain.from_iterable(a[0] for a in answers)).values()))
        n = max(len(answers), 1)
        return {
            "coverage": counts.size / self.catalog_size,
            "gini": gini(counts, self.catalog_size),
            "cold_start_share": sum(a[2] for a in answers) / n,
            "fallback_share": sum(a[3] for a in answers) / n,
            "short_answer_share": sum(len(a[0]) < a[1] for a in answers) / n,
            "empty_answer_share": sum(len(a[0]) == 0 for a in answers) / n,
            "requests": float(len(answers)),
        }

    def register_metrics(self, registry: Any) -> None:
        monitor = self

        class Collector:
            def collect(self) -> Any:
                for name, value in monitor.snapshot().items():
                    yield GaugeMetricFamily(
                        f"endcap_recommendations_{name}",
                        f"Over the last {monitor.config.window} requests: {name}",
                        value=value,
                    )

        registry.register(Collector())


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(RecommendationHealth, type_name="recommendation_health")
