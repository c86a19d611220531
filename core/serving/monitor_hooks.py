"""Monitor hooks called off the request path: :meth:`MonitorHooks.notify` queues a call, which the
monitors' feed delivers in order once the caller has been answered (see
:mod:`endcap.monitoring.feed`). A monitor that raises is logged; it never breaks a request."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from endcap.monitoring.feed import MonitorFeed
from endcap.types import Monitor

log = structlog.get_logger("endcap.service")


class MonitorHooks:
    """Delivers hook calls to the monitors ``monitors()`` returns at delivery (those of the model
    version serving then: monitors carry over a reload)."""

    def __init__(self, monitors: Callable[[], Mapping[str, Monitor]]) -> None:
        self._monitors = monitors
        self.feed = MonitorFeed(self._deliver)

    def notify(self, method: str, *args: object) -> None:
        """Call hook ``method`` of every monitor, after the caller has been answered."""
        self.feed.submit(method, *args)

    def _deliver(self, method: str, args: tuple[object, ...]) -> None:
        for name, monitor in self._monitors().items():
            try:
                getattr(monitor, method)(*args)
            except Exception as exc:  # monitors observe; they never break a request
                log.warning(
                    "monitor_failed", monitor=name, hook=method, error=f"{type(exc).__name__}: {exc}", exc_info=exc
                )
