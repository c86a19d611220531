"""Recently served users' parsed feature rows, reused while their stored rows are unchanged.

Reading a user's row is one indexed ``SELECT``; turning it into :class:`UserFeatures` (protobuf
values, product ids looked up in the catalogue, arrays sorted) costs several times the read. A
storefront asks for the same shopper again and again within a visit, so the serving path keeps
the last ``serving.user_memo_users`` users' parsed rows. Every request still reads the row: the
kept one is used only when the store returns the same bytes and the row is as fresh (within the
view's TTL) as it was, so an answer never rests on a row the store no longer holds, whoever
wrote it (a materialization, a purchase pushed by ``RecordEvents`` in any process). A store that
cannot return rows as stored (Redis) is read and parsed every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from endcap.types import UserFeatures

RawRow = tuple[float | None, tuple[bytes | None, ...]]
"""A row as stored: written at (epoch seconds), serialized values."""


class UserRows(Protocol):
    """What the memo reads (:class:`endcap.features.store.OnlineFeatures`)."""

    def user(self, user_id: str) -> dict[str, Any]: ...

    def user_raw(self, user_id: str) -> RawRow | None: ...

    def user_from_raw(self, written: float | None, raws: tuple[bytes | None, ...]) -> dict[str, Any]: ...

    def fresh(self, written: float | None, stored: bool) -> bool: ...


class UserFeatureMemo:
    """``user_id → UserFeatures`` for one loaded model (``parse`` maps ids to its catalogue), with
    at most ``users`` entries, least recently used dropped first; 0 keeps none."""

    def __init__(self, store: UserRows, parse: Callable[[dict[str, Any]], UserFeatures], users: int) -> None:
        self.store = store
        self.parse = parse
        self.users = users
        self._entries: OrderedDict[str, tuple[tuple[bytes | None, ...], bool, UserFeatures]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, user_id: str) -> UserFeatures:
        raw = self.store.user_raw(user_id) if self.users > 0 else None
        if raw is None:
            return self.parse(self.store.user(user_id))
        written, raws = raw
        fresh = self.store.fresh(written, any(value is not None for value in raws))
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None and entry[0] == raws and entry[1] == fresh:
                self._entries.move_to_end(user_id)
                return entry[2]
        features = self.parse(self.store.user_from_raw(written, raws))
        with self._lock:
            self._entries[user_id] = (raws, fresh, features)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.users:
                self._entries.popitem(last=False)
        return features
