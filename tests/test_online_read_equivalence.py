"""The direct SQLite row read (``endcap.features.sqlite_rows``) returns what Feast's own
``get_online_features`` returns, for random users, after materialization and after pushes; and
when a reader disagrees at start-up, reads fall back to Feast's SDK with a warning."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
from endcap.features.realtime import RealtimeFeatures
from endcap.features.sqlite_rows import SqliteRows, string_key_encoder
from endcap.features.store import USER_COLUMNS, USER_FEATURES, OnlineFeatures
from endcap.types import Event
from endcap.workspace import Workspace
from feast.infra.key_encoding_utils import serialize_entity_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

USERS = [f"u{i}" for i in range(40)] + ["never-seen", "new-1", "new-2"]
ITEMS = [f"i{i}" for i in range(60)] + ["brand-new-a", "brand-new-b"]


@pytest.fixture(scope="module")
def online(synthetic_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> OnlineFeatures:
    workspace = tmp_path_factory.mktemp("equivalence") / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    return OnlineFeatures(Workspace(workspace))


def feast_row(online: OnlineFeatures, user_id: str) -> dict[str, Any]:
    """The user's row as Feast's SDK returns it (``get_online_features(...).to_dict()``)."""
    answer = online.store.get_online_features(features=USER_FEATURES, entity_rows=[{"user_id": user_id}]).to_dict()
    return {column: answer[column][0] for column in USER_COLUMNS}


def test_the_store_reads_rows_directly_after_its_start_up_check(online: OnlineFeatures) -> None:
    assert online.fast_reads_checked
    assert online.user_raw("u1") is not None  # the direct reader is the one in use


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=6))
def test_after_materialization_the_direct_read_equals_feasts(online: OnlineFeatures, users: list[str]) -> None:
    for user_id in users:
        assert online.user(user_id) == feast_row(online, user_id), user_id


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=st.lists(st.sampled_from([*USERS, "nobody", "u1"]), min_size=0, max_size=12))
def test_a_batch_read_of_many_users_equals_reading_each(online: OnlineFeatures, users: list[str]) -> None:
    """Batch jobs read a block's rows in one query: in order, repeats kept, strangers unknown."""
    together = online.users(users)
    assert together == [online.user(user_id) for user_id in users]
    rows = dict(zip(users, together, strict=True))
    assert "nobody" not in rows or rows["nobody"]["orders"] is None
    assert "u1" not in rows or rows["u1"]["orders"] is not None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    orders=st.lists(
        st.tuples(
            st.sampled_from(USERS),
            st.lists(st.sampled_from(ITEMS), min_size=1, max_size=4),
            st.floats(min_value=0, max_value=4_000_000_000),
        ),
        min_size=1,
        max_size=3,
    ),
    other=st.sampled_from(USERS),
)
def test_after_pushes_the_direct_read_equals_feasts(
    online: OnlineFeatures, orders: list[tuple[str, list[str], float]], other: str
) -> None:
    realtime = RealtimeFeatures(online.user_row, online.push, online.row_lock())
    for user_id, items, timestamp in orders:
        realtime.apply([Event(user_id, item_id, "purchase", 1, timestamp) for item_id in items])
    for user_id in {*(user for user, _, _ in orders), other}:
        assert online.user(user_id) == feast_row(online, user_id), user_id
        assert online.user(user_id)["orders"] is not None or user_id == other


def test_a_reader_that_disagrees_with_feast_falls_back_to_the_sdk(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    online = OnlineFeatures(Workspace(workspace))
    good = online._rows
    assert good is not None
    # a real direct reader of the same table whose key encoding is not the one Feast wrote (as a
    # reader would be after a Feast release changed it): it finds no user's row
    serialize = partial(serialize_entity_key, entity_key_serialization_version=3)
    wrong = SqliteRows(good.database, good.table, string_key_encoder("customer_id", serialize), USER_COLUMNS)
    online._rows, online._read_user_row = wrong, wrong.read
    assert online.user("u1") != feast_row(online, "u1"), "the reader does disagree"
    with structlog.testing.capture_logs() as logs:
        assert online.check_fast_reads() is False
    [warning] = [entry for entry in logs if entry["event"] == "fast_online_read_disagrees"]
    assert warning["log_level"] == "warning" and warning["disagreeing"] >= 1
    assert online.user_raw("u1") is None  # the direct reader is out of use
    for user_id in ("u1", "u7", "never-seen"):
        assert online.user(user_id) == feast_row(online, user_id)


def test_a_writer_killed_mid_write_leaves_a_store_the_reader_recovers(
    synthetic_workspace: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    online = OnlineFeatures(Workspace(workspace))
    rows = online._rows
    assert rows is not None
    before = rows.read_raw("u1")
    # a real writer process inside a transaction that has spilled its changes, killed before it
    # commits: its journal is left beside the database for the next connection to roll back
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA cache_size=1'); c.execute('BEGIN')\n"
            f"c.execute('UPDATE \"{rows.table}\" SET value = randomblob(length(value))')\n"
            "print('written', flush=True); time.sleep(60)\n",
            str(rows.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert Path(f"{rows.database}-journal").exists(), "the killed writer left its journal"
    fresh = SqliteRows(rows.database, rows.table, rows.key, rows.features)
    with structlog.testing.capture_logs() as logs:
        assert fresh.read_raw("u1") == before, "the uncommitted write was rolled back"
    assert [entry["event"] for entry in logs] == ["online_store_recovered"]
    assert not Path(f"{rows.database}-journal").exists()
