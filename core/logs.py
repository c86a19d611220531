"""structlog set-up: JSON lines on stderr, with the request id of the call being served."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from contextvars import ContextVar

import structlog

request_id_var: ContextVar[str] = ContextVar("endcap_request_id", default="")
deadline_var: ContextVar[float | None] = ContextVar("endcap_deadline", default=None)
"""The caller's deadline on ``time.monotonic()``'s clock, for the call being served."""


_ids = [os.urandom(8).hex(), itertools.count()]


def _new_id_prefix() -> None:
    _ids[:] = [os.urandom(8).hex(), itertools.count()]


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A request id unique across processes and restarts (32 hex digits, like a UUID's): a random
    prefix drawn when the process starts (or forks), then a counter. No system call per request."""
    prefix, counter = _ids
    return f"{prefix}{next(counter):016x}"


def _add_request_id(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    request_id = request_id_var.get()
    if request_id and "request_id" not in event:
        event["request_id"] = request_id
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write, not at configuration."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """JSON lines (``json_lines``) or a console renderer, at ``level``."""
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
