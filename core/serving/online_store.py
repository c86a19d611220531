"""What serving reads from and writes to the online feature store, as a type: the methods of
:class:`endcap.features.store.OnlineFeatures` the serving package calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pandas as pd
from endcap.features.row_locks import RowLock
from endcap.serving.user_memo import UserRows


class OnlineStore(UserRows, Protocol):
    """Users' rows (read for requests, updated by recorded purchases) and products' statistics."""

    def user_row(self, user_id: str) -> tuple[float | None, dict[str, Any]]:
        """``(written at, row)`` whatever the row's age."""
        ...

    def row_lock(self) -> RowLock:
        """The lock that serialises updates of users' rows across processes."""
        ...

    def push(self, view: str, rows: pd.DataFrame) -> None:
        """Write ``rows`` to feature view ``view`` through its push source."""
        ...

    def products(self, item_ids: Sequence[str]) -> pd.DataFrame:
        """The products' statistics, one row per id in order."""
        ...

    def product_features(self, references: Sequence[str], item_ids: Sequence[str]) -> pd.DataFrame:
        """Product features named ``view:feature``, one column each."""
        ...
