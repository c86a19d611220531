"""Request limits: each refusal names the limit and its value (``limits:`` in ``endcap.yaml``)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

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


class ConcurrencyLimit:
    """At most ``limit`` calls at once; the next one is refused at once, never queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def __enter__(self) -> ConcurrencyLimit:
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"more than {self.limit} calls in flight (limits.max_concurrent_requests); retry with backoff"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._slots.release()
