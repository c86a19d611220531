"""The ``/metrics`` endpoint of a server: every monitor's Prometheus collectors in one registry,
served over HTTP by :func:`endcap.monitoring.endpoint.serve_metrics` (behind the token of
``metrics.token_env`` when one is configured)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog
from endcap.config import MetricsConfig
from endcap.monitoring.endpoint import metrics_token, serve_metrics
from endcap.monitoring.feed import FlushBeforeCollect, MonitorFeed
from endcap.types import Monitor

if TYPE_CHECKING:
    pass

log = structlog.get_logger("endcap.service")


class MetricsEndpoint:
    """``monitors``' metrics; each scrape first flushes ``feed``, so it sees every call answered
    before it."""

    def __init__(self, monitors: Mapping[str, Monitor], feed: MonitorFeed, config: MetricsConfig) -> None:
        from prometheus_client import CollectorRegistry

        self.config = config
        self.registry = CollectorRegistry()
        """Every monitor's collectors; also what the ``metrics_recorder`` monitor records."""
        self.registry.register(FlushBeforeCollect(feed))
        for name, monitor in monitors.items():
            try:
                monitor.register_metrics(self.registry)
            except Exception as exc:
                log.warning(
                    "monitor_failed",
                    monitor=name,
                    hook="register_metrics",
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )

    def text(self) -> bytes:
        """The registry in Prometheus's text exposition format, as a scrape gets it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def expose(self, host: str, port: int) -> int:
        """Serve the metrics at ``http://host:port/metrics`` on a daemon thread (port 0: any free
        one); returns the port."""
        return serve_metrics(self.registry, host, port, metrics_token(self.config))
