"""Request validation: what a Recommend, SimilarItems or RecordEvents request must hold before any
work is done. Every refusal is ``INVALID_ARGUMENT`` and names the field (``events[2].type``,
``k``, ``exclude_item_ids[0]``), with the limit of ``endcap.yaml`` it broke when it broke one."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from endcap.config import LimitsConfig, ServingConfig
from endcap.data.events import EVENT_TYPES
from endcap.errors import InvalidArgument
from endcap.serving.limits import check_event_count, check_id, check_items_and_context
from endcap.serving.model import ServingModel
from endcap.types import EMPTY_INDEX, Event, Query

LATEST_TIMESTAMP = 4_102_444_800.0  # 2100-01-01


@dataclass(frozen=True)
class EventInput:
    """An event as received, before validation."""

    user_id: str
    item_id: str
    type: str
    quantity: int
    timestamp: float | None
    event_id: str = ""


def resolve_k(serving: ServingConfig, k: int) -> int:
    """``k`` as asked (0 means ``serving.default_k``); outside 1..``max_k`` is INVALID_ARGUMENT."""
    if k == 0:
        return serving.default_k
    if not 1 <= k <= serving.max_k:
        raise InvalidArgument(f"k must be between 1 and {serving.max_k} (0 means {serving.default_k}); got {k}")
    return k


def require_id(field: str, value: str) -> None:
    """``field`` must be given and not blank."""
    if not value or not value.strip():
        raise InvalidArgument(f"{field} is required and must not be blank")


class RequestValidator:
    """Checks requests against ``serving`` (``k``) and, when given, ``limits`` (the lengths and
    counts a caller may send), and turns a Recommend request into the :class:`Query` a pipeline
    answers. Offline jobs build one without ``limits``: their ids come from the log, not a caller."""

    def __init__(self, serving: ServingConfig, limits: LimitsConfig | None = None) -> None:
        self.serving = serving
        self.limits = limits

    def k(self, k: int) -> int:
        """See :func:`resolve_k`."""
        return resolve_k(self.serving, k)

    def check_recommend(self, user_id: str, exclude_item_ids: Sequence[str], context: Mapping[str, str]) -> None:
        """A Recommend request's ids, cart and context within ``limits``."""
        self._check_id_and_items("user_id", user_id, exclude_item_ids, context)

    def check_similar(self, item_id: str, exclude_item_ids: Sequence[str]) -> None:
        """A SimilarItems request's ids within ``limits``."""
        self._check_id_and_items("item_id", item_id, exclude_item_ids, None)

    def _check_id_and_items(
        self, field: str, value: str, exclude_item_ids: Sequence[str], context: Mapping[str, str] | None
    ) -> None:
        if self.limits is None:
            require_id(field, value)
            return
        check_id(field, value, self.limits)
        check_items_and_context(self.limits, exclude_item_ids, context)

    def query(
        self,
        model: ServingModel,
        user_id: str,
        k: int,
        exclude_item_ids: Sequence[str] = (),
        context: Mapping[str, str] | None = None,
        variant: str = "",
        as_of: float = math.nan,
    ) -> Query:
        """The query for ``model``: the user's and the excluded items' indices in its catalogue
        (ids it does not know are dropped from the exclusions), ``k`` resolved, and ``as_of``
        (seconds since 1970; NaN: not given) checked."""
        require_id("user_id", user_id)
        if not math.isnan(as_of) and not 0 <= as_of < LATEST_TIMESTAMP:
            raise InvalidArgument(f"as_of must be between 1970 and 2100; got {as_of:.0f} seconds")
        exclude = EMPTY_INDEX
        if exclude_item_ids:
            exclude = model.item_indices(list(exclude_item_ids))
            exclude = np.unique(exclude[exclude >= 0])
            exclude.flags.writeable = False
        return Query(
            user_id=user_id,
            user_index=model.user_index.get(user_id, -1),
            k=self.k(k),
            exclude=exclude,
            context=dict(context or {}),
            variant=variant,
            as_of=as_of,
        )

    def events(self, inputs: Sequence[EventInput], now: float | None = None) -> tuple[Event, ...]:
        """Every event of a RecordEvents call validated (the first invalid one refuses the batch,
        named by its position); an event without a timestamp happened ``now``."""
        limits = self.limits or LimitsConfig.model_validate({})
        check_event_count(limits, len(inputs))
        now = time.time() if now is None else now
        return tuple(validated_event(event, position, now, limits) for position, event in enumerate(inputs))


def validated_event(event: EventInput, position: int, now: float, limits: LimitsConfig) -> Event:
    """``event`` (the ``position``-th of its call) as an :class:`Event`, or INVALID_ARGUMENT naming
    the field; a quantity of 0 means 1."""
    where = f"events[{position}]"
    for field in ("user_id", "item_id"):
        check_id(f"{where}.{field}", getattr(event, field), limits)
    if event.type not in EVENT_TYPES:
        raise InvalidArgument(f"{where}.type must be one of {', '.join(t.upper() for t in EVENT_TYPES)}")
    if len(event.event_id) > limits.max_id_length:
        raise InvalidArgument(
            f"{where}.event_id is {len(event.event_id)} characters; the limit (limits.max_id_length) is "
            f"{limits.max_id_length}"
        )
    if event.quantity < 0:
        raise InvalidArgument(f"{where}.quantity must not be negative; got {event.quantity}")
    if event.timestamp is not None and not 0 <= event.timestamp < LATEST_TIMESTAMP:
        raise InvalidArgument(f"{where}.timestamp must be between 1970 and 2100; got {event.timestamp:.0f} seconds")
    return Event(
        user_id=event.user_id,
        item_id=event.item_id,
        type=event.type,
        quantity=event.quantity or 1,
        timestamp=event.timestamp if event.timestamp is not None else now,
        event_id=event.event_id,
    )
