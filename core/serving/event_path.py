"""The event path of RecordEvents, after validation: the workspace's event log (appended and
fsynced before the call returns, a torn last line cut off at start) and, with
``serving.realtime_features``, the purchases pushed to the users' online rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog
from endcap.data.events import EventLog
from endcap.features.realtime import RealtimeFeatures
from endcap.serving.online_store import OnlineStore
from endcap.types import Event

log = structlog.get_logger("endcap.service")


class EventPath:
    """Writes validated events: every one to ``log``, purchases to ``realtime`` when given."""

    def __init__(self, log: EventLog, realtime: RealtimeFeatures | None = None) -> None:
        self.log = log
        self.realtime = realtime

    @classmethod
    def open(cls, path: Path, online: OnlineStore | None) -> EventPath:
        """The event log at ``path``, repaired (see :meth:`EventLog.repair`); purchases pushed to
        ``online`` when one is given."""
        events = EventLog(path)
        events.repair()
        realtime = RealtimeFeatures(online.user_row, online.push, online.row_lock()) if online is not None else None
        return cls(events, realtime)

    def repair(self) -> int:
        """Cut a torn last line off the log; returns the bytes moved aside."""
        return self.log.repair()

    def record(self, events: Sequence[Event]) -> tuple[Event, ...]:
        """Append ``events`` durably, less those a retried call already recorded (same
        ``event_id``), and push the purchases among them; returns the events written. A failed
        push is logged, not raised: the events are in the log, and the next retrain learns them."""
        recorded = self.log.record(events)
        if self.realtime is not None:
            try:
                self.realtime.apply(recorded)
            except Exception as exc:
                log.error(
                    "realtime_update_failed",
                    events=len(recorded),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
        return recorded
