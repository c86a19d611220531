"""The serving path's memo of parsed user rows: reused while the online store is unchanged, read
again after any write to it, bounded, and never past the row's TTL."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from endcap.feature_store import OnlineFeatures
from endcap.realtime import RealtimeFeatures
from endcap.types import Event, UserFeatures
from endcap.user_memo import UserFeatureMemo
from endcap.workspace import Workspace


class CountingParse:
    """Stands in for ``ServingModel.user_features``: keeps the order count, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, row: dict[str, Any]) -> UserFeatures:
        self.calls += 1
        return UserFeatures(stats={"orders": float(row["orders"])} if row["orders"] is not None else {})


def test_a_users_row_is_parsed_once_until_the_store_is_written(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = Workspace(shutil.copytree(synthetic_workspace, tmp_path / "ws"))
    online = OnlineFeatures(workspace)
    parse = CountingParse()
    memo = UserFeatureMemo(online, parse, users=10)

    first = memo("u3")
    assert memo("u3") is first and memo("nobody") is memo("nobody")
    assert parse.calls == 2 and first.known and not memo("nobody").known

    # A purchase pushed through Feast on a connection of its own, as another server process would.
    writer = OnlineFeatures(workspace)
    RealtimeFeatures(writer.user, writer.push).apply([Event("u3", "i1", "purchase", 1, time.time())])
    after = memo("u3")
    assert parse.calls == 3
    assert after.stats["orders"] == first.stats["orders"] + 1
    assert memo("u3") is after and parse.calls == 3


def test_threads_share_entries_and_none_serves_one_after_a_write(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = Workspace(shutil.copytree(synthetic_workspace, tmp_path / "ws"))
    memo = UserFeatureMemo(OnlineFeatures(workspace), CountingParse(), users=10)
    with ThreadPoolExecutor(max_workers=1) as other_thread:
        other_thread.submit(memo, "u2").result()  # each thread's first look moves the count on
        before = memo("u3")
        assert other_thread.submit(memo, "u3").result() is before  # filled here, served there
        writer = OnlineFeatures(workspace)
        RealtimeFeatures(writer.user, writer.push).apply([Event("u3", "i1", "purchase", 1, time.time())])
        assert other_thread.submit(memo, "u3").result().stats["orders"] == before.stats["orders"] + 1
        assert memo("u3").stats["orders"] == before.stats["orders"] + 1


def test_the_memo_keeps_the_most_recently_served_users(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = Workspace(shutil.copytree(synthetic_workspace, tmp_path / "ws"))
    online = OnlineFeatures(workspace)
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


class RowsWithTtl:
    """A store whose one row leaves its TTL ``fresh_for`` seconds after it is read."""

    def __init__(self, fresh_for: float) -> None:
        self.fresh_for = fresh_for
        self.reads = 0

    def changes(self) -> int | None:
        return 1

    def user_row(self, user_id: str) -> tuple[float, dict[str, Any]]:
        self.reads += 1
        return time.time() + self.fresh_for, {"orders": 3}


def test_an_entry_is_not_used_past_its_rows_ttl() -> None:
    rows = RowsWithTtl(fresh_for=0.2)
    memo = UserFeatureMemo(rows, CountingParse(), users=10)
    memo("u1")
    memo("u1")
    assert rows.reads == 1
    time.sleep(0.3)
    memo("u1")
    assert rows.reads == 2


def test_user_row_reports_how_long_the_row_stays_fresh(synthetic_workspace: Path) -> None:
    online = OnlineFeatures(Workspace(synthetic_workspace))
    expires, row = online.user_row("u3")
    assert row["orders"] is not None
    ttl = online._user_view.ttl.total_seconds()
    assert time.time() < expires <= time.time() + ttl
    expires, row = online.user_row("nobody")
    assert row["orders"] is None and expires == float("inf")
