"""structlog set-up: lines on stderr (written in batches), with the request id of the call being served.

``ENDCAP_LOG_FORMAT`` picks the format: ``json`` (one JSON object per line, for log collectors)
or ``console`` (aligned, readable text). Unset, it is ``console`` when stderr is a terminal and
``json`` otherwise. An error line logged while an exception is being handled carries that
exception and its traceback in either format.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

request_id_var: ContextVar[str] = ContextVar("endcap_request_id", default="")
deadline_var: ContextVar[float | None] = ContextVar("endcap_deadline", default=None)
"""The caller's deadline on ``time.monotonic()``'s clock, for the call being served."""


_ids: tuple[str, itertools.count[int]] = (os.urandom(8).hex(), itertools.count())


def _new_id_prefix() -> None:
    global _ids
    _ids = (os.urandom(8).hex(), itertools.count())


os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A request id unique across processes and restarts (32 hex digits, like a UUID's): a random
    prefix drawn when the process starts (or forks), then a counter. No system call per request."""
    prefix, counter = _ids
    return f"{prefix}{next(counter):016x}"


def _add_request_id(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = request_id_var.get()
    if request_id and "request_id" not in event:
        event["request_id"] = request_id
    return event


FLUSH_SECONDS = 0.1
"""Longest an info line waits in the buffer before it is written."""


class LineBatcher:
    """Log lines for stderr, written in chunks of whole lines.

    A write is a system call, and it lets go of the GIL: on a busy server every one costs a
    thread switch, which per request line costs more than rendering the line. So info lines are
    collected and written at most ``PIPE_BUF`` bytes at a time (several processes sharing a pipe
    then never split each other's lines): when the next line would not fit, within
    ``FLUSH_SECONDS`` on a thread of the batcher's own, and at exit. A warning or an error is
    written at once, after the lines before it. Writes go to whatever ``sys.stderr`` is at the
    time (test runners swap it).
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._flusher_started = False

    def write_soon(self, line: str) -> None:
        size = len(line) if line.isascii() else len(line.encode())
        with self._lock:
            if self._size + size > select.PIPE_BUF:
                self._write(self._take())
            if not self._lines:
                self._pending.set()
            self._lines.append(line)
            self._size += size
        if not self._flusher_started:
            self._start_flusher()

    def write_now(self, line: str) -> None:
        with self._lock:
            self._write(self._take() + line)

    def flush(self) -> None:
        with self._lock:
            self._pending.clear()
            self._write(self._take())

    def _take(self) -> str:
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        return text

    @staticmethod
    def _write(text: str) -> None:
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher_started:
                return
            self._flusher_started = True

        def run() -> None:
            while True:
                self._pending.wait()
                time.sleep(FLUSH_SECONDS)
                self.flush()

        threading.Thread(target=run, name="endcap-log-flush", daemon=True).start()

    def after_fork(self) -> None:
        """In a forked child: the parent's lines are the parent's to write."""
        self._lines.clear()
        self._size = 0
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._flusher_started = False


class BatchedLogger:
    """A structlog logger writing rendered lines through a :class:`LineBatcher`."""

    def __init__(self, batcher: LineBatcher) -> None:
        self._batcher = batcher

    def msg(self, message: str) -> None:
        self._batcher.write_soon(message + "\n")

    def urgent(self, message: str) -> None:
        self._batcher.write_now(message + "\n")

    debug = info = log = msg
    warn = warning = err = error = critical = fatal = exception = failure = urgent


stderr_lines = LineBatcher()
os.register_at_fork(after_in_child=stderr_lines.after_fork)
atexit.register(stderr_lines.flush)


def flush_logs() -> None:
    """Write every log line still in the batch (see :class:`LineBatcher`)."""
    stderr_lines.flush()


def _json_line(event: object, default: Callable[[object], object] | None = None, **_: object) -> str:
    """One event as compact JSON (orjson: a tenth of the standard library's time for a request
    line); numpy values as numbers, non-string keys as strings, anything else by ``default``."""
    return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def exception_fields(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Turn ``exc_info`` (``True`` inside an ``except`` block, an exception, or a ``sys.exc_info()``
    tuple) into an ``exception`` field: ``{"type", "message", "traceback"}``, the traceback as
    the text Python prints. Without it a JSON line would read ``"exc_info": true`` and nothing
    else."""
    exc_info = event.pop("exc_info", None)
    if not exc_info:
        return event
    if isinstance(exc_info, BaseException):
        error: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        error = sys.exc_info()[1]
    if error is not None:
        kind = type(error)
        event["exception"] = {
            "type": kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
    return event


_ERROR_METHODS = frozenset({"error", "err", "exception", "critical", "fatal", "failure"})


def errors_carry_their_exception(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """An error line logged inside an ``except`` block carries the exception being handled, as if
    ``exc_info=True`` had been passed; ``exc_info=False`` still leaves it out."""
    if method in _ERROR_METHODS and "exc_info" not in event and sys.exc_info()[1] is not None:
        event["exc_info"] = True
    return event


LOG_FORMAT_VARIABLE = "ENDCAP_LOG_FORMAT"
LOG_FORMATS = ("console", "json")


def log_format() -> str:
    """``console`` or ``json``: ``$ENDCAP_LOG_FORMAT`` when set to one of them, else ``console``
    when stderr is a terminal and ``json`` otherwise (a file, a pipe, a log collector)."""
    chosen = os.environ.get(LOG_FORMAT_VARIABLE, "").strip().lower()
    if chosen in LOG_FORMATS:
        return chosen
    return "console" if _stderr_is_a_terminal() else "json"


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without one, or closed
        return False


_json_renderer = structlog.processors.JSONRenderer(serializer=_json_line)
_timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
_info_lines_direct = False
"""Whether :func:`info_line` renders JSON lines itself (set by :func:`configure_logging`)."""


def configure_logging(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Lines at ``level`` and above, as JSON (``json_lines=True``) or for a console
    (``json_lines=False``); by default as :func:`log_format` says. A line logged with
    ``exc_info`` (``log.exception``, ``exc_info=error``, or any error line inside an ``except``
    block) carries the exception's type, message and traceback: as the ``exception`` field of a
    JSON line (see :func:`exception_fields`), or printed below the line by the console renderer."""
    global _info_lines_direct
    unknown = os.environ.get(LOG_FORMAT_VARIABLE, "").strip().lower()
    unknown = unknown if unknown and unknown not in LOG_FORMATS else ""
    if json_lines is None:
        json_lines = log_format() == "json"
    threshold = getattr(logging, level.upper())
    _info_lines_direct = json_lines and threshold <= logging.INFO
    # the console's traceback as Python prints it: rich's would add local variables, which may
    # hold user ids or tokens
    console = structlog.dev.ConsoleRenderer(
        colors=_stderr_is_a_terminal(), exception_formatter=structlog.dev.plain_traceback
    )
    renderer: list[Any] = [exception_fields, _json_renderer] if json_lines else [console]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            _timestamper,
            errors_carry_their_exception,
            *renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: BatchedLogger(stderr_lines),
        cache_logger_on_first_use=True,
    )
    if unknown:
        structlog.get_logger("endcap.logs").warning(
            "unknown_log_format", variable=LOG_FORMAT_VARIABLE, value=unknown, allowed=list(LOG_FORMATS)
        )


def info_line(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """``logger.info(event, **fields)`` for a line written per request: with JSON lines configured
    it is rendered here, the same line structlog would write (``fields``, then ``event``,
    ``level`` and ``timestamp``) at half the cost; ``fields`` becomes the line's event dict.
    Once structlog is configured otherwise (``structlog.testing.capture_logs``, an application's
    own set-up), the line goes through structlog.
    Variables bound with ``structlog.contextvars`` are not merged: use it where none are bound
    (monitors run after the call, outside its context)."""
    processors = structlog.get_config()["processors"]
    if not (_info_lines_direct and processors and processors[-1] is _json_renderer):  # reconfigured since
        logger.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    _timestamper(None, "info", fields)
    stderr_lines.write_soon(_json_renderer(None, "info", fields) + "\n")
