"""``online_quality``: did shoppers buy what they were shown?

Each Recommend answer is remembered per user; a purchase recorded through ``RecordEvents``
within ``attribution_hours`` of an answer that contained the item is attributed to that answer's
variant and model version. Exposes attributed purchases, answers shown, answers with at least one
attributed purchase, and their ratio (the online hit rate).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import endcap
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field


@dataclass
class _Shown:
    at: float
    items: frozenset[str]
    key: tuple[str, str]
    hit: bool = False


@dataclass
class _Tally:
    shown: int = 0
    hit: int = 0
    purchases: int = 0


@dataclass
class OnlineQualityState:
    by_user: OrderedDict[str, deque[_Shown]] = field(default_factory=OrderedDict)
    tallies: defaultdict[tuple[str, str], _Tally] = field(default_factory=lambda: defaultdict(_Tally))


class OnlineQualityConfig(endcap.ComponentConfig):
    attribution_hours: float = Field(24.0, gt=0)
    max_users: int = Field(100_000, ge=1)
    """Users remembered at once (least recently served forgotten first)."""
    answers_per_user: int = Field(20, ge=1)


class OnlineQuality(endcap.Monitor):
    Config = OnlineQualityConfig
    config: OnlineQualityConfig

    def __init__(self, name: str, config: OnlineQualityConfig) -> None:
        super().__init__(name, config)
        self._lock = threading.Lock()
        self.state = OnlineQualityState()

    def on_request(self, record: endcap.RequestRecord) -> None:
        if not record.item_ids:
            return
        key = (record.query.variant or "default", record.model_version)
        with self._lock:
            shown = self.state.by_user.pop(record.query.user_id, None) or deque(maxlen=self.config.answers_per_user)
            shown.append(_Shown(time.time(), frozenset(record.item_ids), key))
            self.state.by_user[record.query.user_id] = shown
            while len(self.state.by_user) > self.config.max_users:
                self.state.by_user.popitem(last=False)
            self.state.tallies[key].shown += 1

    def on_events(self, events: tuple[endcap.Event, ...]) -> None:
        window = self.config.attribution_hours * 3600.0
        with self._lock:
            for event in events:
                if event.type != "purchase":
                    continue
                for answer in reversed(self.state.by_user.get(event.user_id, ())):
                    if 0 <= event.timestamp - answer.at <= window and event.item_id in answer.items:
                        tally = self.state.tallies[answer.key]
                        tally.purchases += 1
                        if not answer.hit:
                            answer.hit = True
                            tally.hit += 1
                        break

    def snapshot(self) -> dict[tuple[str, str], _Tally]:
        with self._lock:
            return {key: _Tally(t.shown, t.hit, t.purchases) for key, t in self.state.tallies.items()}

    def register_metrics(self, registry: Any) -> None:
        monitor = self

        class Collector:
            def collect(self) -> Any:
                labels = ["variant", "model_version"]
                shown = CounterMetricFamily("endcap_online_answers_shown", "Recommend answers shown", labels=labels)
                hits = CounterMetricFamily(
                    "endcap_online_answers_hit", "Answers followed by a purchase of a shown item", labels=labels
                )
                bought = CounterMetricFamily(
                    "endcap_online_attributed_purchases", "Purchases of a recently shown item", labels=labels
                )
                rate = GaugeMetricFamily("endcap_online_hit_rate", "Answers hit / answers shown", labels=labels)
                for (variant, version), tally in monitor.snapshot().items():
                    shown.add_metric([variant, version], tally.shown)
                    hits.add_metric([variant, version], tally.hit)
                    bought.add_metric([variant, version], tally.purchases)
                    rate.add_metric([variant, version], tally.hit / tally.shown if tally.shown else 0.0)
                yield from (shown, hits, bought, rate)

        registry.register(Collector())


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(OnlineQuality, type_name="online_quality")
