"""Real-time user features on the default (SQLite) profile: a recorded purchase is in the buyer's
online row before RecordEvents returns."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
from conftest import start_server, stop_server
from endcap.features.realtime import updated_user_row
from endcap.features.store import OnlineFeatures
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from endcap.workspace import Workspace


def test_one_more_order_updates_counts_and_recency() -> None:
    current = {
        "orders": 4,
        "avg_basket_size": 2.0,
        "avg_days_between_orders": 7.0,
        "distinct_items": 2,
        "item_ids": ["a", "b"],
        "times_bought": [3, 1],
        "orders_since_last_bought": [0, 2],
        "orders_since_first_bought": [3, 2],
        "last_order_day": 18_990.25,
        "last_bought_day": [18_990.25, 18_980.0],
        "first_bought_day": [18_950.0, 18_980.0],
    }
    row = updated_user_row(current, ["b", "c", "b"], 19_000.5)
    assert row["orders_since_first_bought"] == [4, 3, 0]
    assert row["last_order_day"] == 19_000.5
    assert row["last_bought_day"] == [18_990.25, 19_000.5, 19_000.5]
    assert row["first_bought_day"] == [18_950.0, 18_980.0, 19_000.5]
    stats, products = (
        {k: row[k] for k in ("orders", "avg_basket_size", "avg_days_between_orders", "distinct_items")},
        {k: row[k] for k in ("item_ids", "times_bought", "orders_since_last_bought")},
    )
    assert stats == {"orders": 5, "avg_basket_size": 2.0, "avg_days_between_orders": 7.0, "distinct_items": 3}
    assert products == {"item_ids": ["a", "b", "c"], "times_bought": [3, 2, 1], "orders_since_last_bought": [1, 0, 0]}
    row = updated_user_row(dict.fromkeys(current), ["x"], 19_000.5)
    stats, products = (
        {k: row[k] for k in ("orders", "avg_basket_size", "avg_days_between_orders", "distinct_items")},
        {k: row[k] for k in ("item_ids", "times_bought", "orders_since_last_bought")},
    )
    assert stats["orders"] == 1 and products == {
        "item_ids": ["x"],
        "times_bought": [1],
        "orders_since_last_bought": [0],
    }
    assert row["orders_since_first_bought"] == [0]
    assert row["last_order_day"] == 19_000.5 and row["last_bought_day"] == row["first_bought_day"] == [19_000.5]


def test_a_row_written_before_the_newer_columns_marks_them_unknown() -> None:
    from endcap.plugins.ranking_features import CadenceFeatures, CalendarFeatures
    from endcap.serving.model import _float_or_nan
    from endcap.types import Query, UserFeatures

    earlier = {"orders": 3, "avg_basket_size": 1.0, "avg_days_between_orders": 7.0, "distinct_items": 1}
    earlier |= {"item_ids": ["a"], "times_bought": [3], "orders_since_last_bought": [0]}
    row = updated_user_row(earlier, ["a", "b"], 19_000.5)
    assert row["orders_since_first_bought"] == [-1, 0]  # unknown for "a"; "b" is new
    assert row["last_bought_day"] == [19_000.5, 19_000.5] and row["first_bought_day"] == [-1.0, 19_000.5]
    assert row["last_order_day"] == 19_000.5 and _float_or_nan(-1.0) != _float_or_nan(-1.0)  # NaN
    user = UserFeatures(
        stats={"orders": 4.0, "avg_days_between_orders": 7.0, "last_order_day": 19_000.5},
        items=np.array([0], dtype=np.int32),
        item_stats={
            "times_bought": np.array([4.0], np.float32),
            "orders_since_last_bought": np.array([0.0], np.float32),
            "orders_since_first_bought": np.array([-1.0], np.float32),
            "last_bought_day": np.array([19_000.5], np.float32),
            "first_bought_day": np.array([-1.0], np.float32),
        },
    )
    ids = np.array([0], dtype=np.int32)
    cadence = CadenceFeatures("cadence", {}).compute(Query("u", 0, 10), user, ids, np.zeros((1, 0), np.float32))
    assert (cadence == -1.0).all()  # never a negative interval from the unknown first purchase
    calendar = CalendarFeatures("calendar", {}).compute(
        Query("u", 0, 10, as_of=19_003.5 * 86_400), user, ids, np.zeros((1, 0), np.float32)
    )
    np.testing.assert_allclose(calendar[0], [3.0, 3 / 7, 3.0, -1.0])


def test_record_events_updates_the_known_users_online_row(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    online = OnlineFeatures(Workspace(workspace))
    before = online.user("u3")
    staple = before["item_ids"][0]
    server = start_server(workspace, tmp_path)
    try:
        stub = pb_grpc.RecommendationServiceStub(grpc.insecure_channel(server.target))
        events = [pb.Event(user_id="u3", item_id=staple, type=pb.EVENT_TYPE_PURCHASE)]
        events.append(pb.Event(user_id="u3", item_id="i59", type=pb.EVENT_TYPE_VIEW))  # views change nothing
        stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=10)
        after = online.user("u3")
    finally:
        stop_server(server)
    assert after["orders"] == before["orders"] + 1
    at = after["item_ids"].index(staple)
    assert after["times_bought"][at] == before["times_bought"][0] + 1
    assert after["orders_since_last_bought"][at] == 0
    assert "i59" not in after["item_ids"] or "i59" in before["item_ids"]
    others = [s for i, s in zip(after["item_ids"], after["orders_since_last_bought"], strict=True) if i != staple]
    assert others == [
        s + 1 for i, s in zip(before["item_ids"], before["orders_since_last_bought"], strict=True) if i != staple
    ]


def test_a_store_registered_before_the_newer_columns_still_serves(synthetic_workspace: Path, tmp_path: Path) -> None:
    from endcap.features.realtime import NEWER_ARRAYS
    from endcap.features.store import existing_store

    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    store = existing_store(Workspace(workspace))
    view = store.get_feature_view("user_stats")
    view.features = [f for f in view.features if f.name not in (*NEWER_ARRAYS, "last_order_day")]
    store.apply([view])  # the view as an earlier Endcap registered it
    online = OnlineFeatures(Workspace(workspace))
    assert "last_order_day" not in online.columns and online.fast_reads_checked
    row = online.user("u1")
    assert row["orders"] and row["item_ids"] and row["last_order_day"] is None and row["first_bought_day"] is None
