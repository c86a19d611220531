"""The serving path's memo of parsed user rows: reused while the user's stored row is unchanged,
parsed again once anything rewrites it, bounded, and never past the row's TTL."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from endcap.features.realtime import RealtimeFeatures
from endcap.features.store import OnlineFeatures
from endcap.serving.user_memo import RawRow, UserFeatureMemo
from endcap.types import Event, UserFeatures
from endcap.workspace import Workspace


class CountingParse:
    """Stands in for ``ServingModel.user_features``: keeps the order count, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, row: dict[str, Any]) -> UserFeatures:
        self.calls += 1
        return UserFeatures(stats={"orders": float(row["orders"])} if row["orders"] is not None else {})


def buy(workspace: Workspace, user_id: str) -> None:
    """A purchase pushed through Feast on a connection of its own, as another server process would."""
    writer = OnlineFeatures(workspace)
    RealtimeFeatures(writer.user_row, writer.push, writer.row_lock()).apply(
        [Event(user_id, "i1", "purchase", 1, time.time())]
    )


def test_a_users_row_is_parsed_once_until_it_is_rewritten(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = Workspace(shutil.copytree(synthetic_workspace, tmp_path / "ws"))
    parse = CountingParse()
    memo = UserFeatureMemo(OnlineFeatures(workspace), parse, users=10)

    first = memo("u3")
    assert memo("u3") is first and memo("nobody") is memo("nobody")
    assert parse.calls == 2 and first.known and not memo("nobody").known

    buy(workspace, "u5")  # another user's row: u3's parse still holds
    assert memo("u3") is first and parse.calls == 2

    buy(workspace, "u3")
    after = memo("u3")
    assert parse.calls == 3
    assert after.stats["orders"] == first.stats["orders"] + 1
    assert memo("u3") is after and parse.calls == 3


def test_threads_share_entries_and_none_serves_one_after_a_write(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = Workspace(shutil.copytree(synthetic_workspace, tmp_path / "ws"))
    memo = UserFeatureMemo(OnlineFeatures(workspace), CountingParse(), users=10)
    with ThreadPoolExecutor(max_workers=1) as other_thread:
        before = memo("u3")
        assert other_thread.submit(memo, "u3").result() is before  # parsed here, served there
        buy(workspace, "u3")
        assert other_thread.submit(memo, "u3").result().stats["orders"] == before.stats["orders"] + 1
        assert memo("u3").stats["orders"] == before.stats["orders"] + 1


def test_the_memo_keeps_the_most_recently_served_users(synthetic_workspace: Path, tmp_path: Path) -> None:
    online = OnlineFeatures(Workspace(synthetic_workspace))
    parse = CountingParse()
    memo = UserFeatureMemo(online, parse, users=2)
    for user in ("u1", "u2", "u1", "u3"):  # u2 is now the least recently used, and dropped
        memo(user)
    assert parse.calls == 3
    memo("u1")
    memo("u3")
    assert parse.calls == 3
    memo("u2")
    assert parse.calls == 4

    off = CountingParse()
    memo = UserFeatureMemo(online, off, users=0)
    memo("u1")
    memo("u1")
    assert off.calls == 2


def test_a_row_read_as_stored_parses_to_the_row_the_store_returns(synthetic_workspace: Path) -> None:
    online = OnlineFeatures(Workspace(synthetic_workspace))
    for user in ("u3", "nobody"):
        raw = online.user_raw(user)
        assert raw is not None
        assert online.user_from_raw(*raw) == online.user(user)
    assert online.user("u3")["orders"] and online.user("nobody")["orders"] is None


class RowWithTtl:
    """A store holding one row, past the view's TTL ``ttl`` seconds after it was written."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.written = time.time()

    def user(self, user_id: str) -> dict[str, Any]:
        return self.user_from_raw(*self.user_raw(user_id))

    def user_raw(self, user_id: str) -> RawRow:
        return self.written, (b"stored",)

    def user_from_raw(self, written: float | None, raws: tuple[bytes | None, ...]) -> dict[str, Any]:
        return {"orders": 3 if self.fresh(written, True) else None}

    def fresh(self, written: float | None, stored: bool) -> bool:
        return stored and written is not None and time.time() - written <= self.ttl


def test_an_entry_is_not_used_once_its_row_is_past_the_ttl() -> None:
    parse = CountingParse()
    memo = UserFeatureMemo(RowWithTtl(ttl=0.2), parse, users=10)
    assert memo("u1").known and memo("u1").known
    assert parse.calls == 1
    time.sleep(0.3)  # the same stored bytes, now too old to serve
    assert not memo("u1").known
    assert parse.calls == 2
