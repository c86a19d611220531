"""Recently served users' parsed feature rows, reused while the online store has not changed.

Reading a user's row is one indexed ``SELECT``; turning it into :class:`UserFeatures` (protobuf
values, product ids looked up in the catalogue, arrays sorted) costs more than the read itself.
A storefront asks for the same shopper again and again within a visit, so the serving path keeps
the last ``serving.user_memo_users`` users' parsed rows. An entry is used only while the store's
change count (see :meth:`OnlineFeatures.changes`) is the one read before the entry's row was,
and while the row is within the view's TTL: any write to the store — a materialization, a
purchase pushed by ``RecordEvents`` in any process — makes every entry read again, so an answer
never rests on a row the store no longer holds. A store that cannot report changes (Redis) is
read on every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from endcap.types import UserFeatures


class UserRows(Protocol):
    def changes(self) -> int | None: ...

    def user_row(self, user_id: str) -> tuple[float, dict[str, Any]]: ...


class UserFeatureMemo:
    """``user_id → UserFeatures`` for one loaded model (``parse`` maps ids to its catalogue), with
    at most ``users`` entries, least recently used dropped first; 0 keeps none."""

    def __init__(self, store: UserRows, parse: Callable[[dict[str, Any]], UserFeatures], users: int) -> None:
        self.store = store
        self.parse = parse
        self.users = users
        self._entries: OrderedDict[str, tuple[int, float, UserFeatures]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, user_id: str) -> UserFeatures:
        changes = self.store.changes() if self.users > 0 else None
        if changes is not None:
            with self._lock:
                entry = self._entries.get(user_id)
                if entry is not None and entry[0] == changes and time.time() <= entry[1]:
                    self._entries.move_to_end(user_id)
                    return entry[2]
        expires, row = self.store.user_row(user_id)
        features = self.parse(row)
        if changes is not None:
            with self._lock:
                self._entries[user_id] = (changes, expires, features)
                self._entries.move_to_end(user_id)
                while len(self._entries) > self.users:
                    self._entries.popitem(last=False)
        return features
