"""Request limits: each refusal names the limit and its value (``limits:`` in ``endcap.yaml``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

from endcap.config import LimitsConfig
from endcap.errors import InvalidArgument, ResourceExhausted


def check_id(field: str, value: str, limits: LimitsConfig) -> None:
    if not value or not value.strip():
        raise InvalidArgument(f"{field} is required and must not be blank")
    if len(value) > limits.max_id_length:
        raise InvalidArgument(
            f"{field} is {len(value)} characters; the limit (limits.max_id_length) is {limits.max_id_length}"
        )


def check_items_and_context(
    limits: LimitsConfig, exclude_item_ids: Sequence[str], context: Mapping[str, str] | None = None
) -> None:
    if len(exclude_item_ids) > limits.max_exclude_items:
        raise InvalidArgument(
            f"exclude_item_ids has {len(exclude_item_ids)} ids; the limit (limits.max_exclude_items) is "
            f"{limits.max_exclude_items}"
        )
    for position, item_id in enumerate(exclude_item_ids):
        if len(item_id) > limits.max_id_length:
            raise InvalidArgument(
                f"exclude_item_ids[{position}] is {len(item_id)} characters; the limit (limits.max_id_length) is "
                f"{limits.max_id_length}"
            )
    context = context or {}
    if len(context) > limits.max_context_entries:
        raise InvalidArgument(
            f"context has {len(context)} entries; the limit (limits.max_context_entries) is "
            f"{limits.max_context_entries}"
        )
    for key, value in context.items():
        if len(key) > limits.max_context_value_length or len(value) > limits.max_context_value_length:
            raise InvalidArgument(
                f"context entry {key[:40]!r} is longer than the limit (limits.max_context_value_length) of "
                f"{limits.max_context_value_length} characters"
            )


def check_event_count(limits: LimitsConfig, count: int) -> None:
    if count == 0:
        raise InvalidArgument("events is empty; send at least one event")
    if count > limits.max_events_per_call:
        raise InvalidArgument(
            f"{count} events in one call; the limit (limits.max_events_per_call) is {limits.max_events_per_call}; "
            "split them into several calls"
        )


class AdmittedCalls(futures.ThreadPoolExecutor):
    """The worker threads that run limited calls, counting each call from its arrival (queued or
    running) to its end, cancelled calls included.

    gRPC hands a call to its handler's ``experimental_thread_pool`` when it has one; the
    interceptor, which sees every call as it arrives, admits it only while fewer than ``limit``
    are counted, so no more than ``limit`` calls ever wait or run, whatever ``max_workers`` is.
    """

    def __init__(self, limit: int, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="endcap-rpc")
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()
        self.after_call: Callable[[], None] | None = None
        """Run on the call's thread once the call is over and no longer counted (the server
        delivers queued monitor hooks here)."""

    @property
    def full(self) -> bool:
        return self._count >= self.limit

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"more than {self.limit} calls in flight (limits.max_concurrent_requests); retry with backoff"
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._lock:
            self._count += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished()
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: object = None) -> None:
        with self._lock:
            self._count -= 1
        if future is not None and self.after_call is not None:
            self.after_call()
