from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from endcap.features.tables import compute_feature_tables
from endcap.workspace import Workspace

FEATURE_REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def tiny_log() -> pd.DataFrame:
    rows = [
        ("a", "x", "b1", "2024-01-01"),
        ("a", "y", "b1", "2024-01-01"),
        ("a", "x", "b2", "2024-01-05"),
        ("a", "z", "b3", "2024-01-11"),
        ("b", "x", "b4", "2024-01-03"),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "basket_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["quantity"] = 1
    return frame


def test_feature_tables_hold_the_expected_statistics() -> None:
    tables = compute_feature_tables(tiny_log())
    users = tables["user_stats"].set_index("user_id")
    assert users.loc["a", "orders"] == 3
    assert users.loc["a", "avg_basket_size"] == pytest.approx(4 / 3)
    assert users.loc["a", "avg_days_between_orders"] == pytest.approx(5.0)
    assert users.loc["a", "distinct_items"] == 3
    products = tables["product_stats"].set_index("item_id")
    assert products.loc["x", "purchases"] == 3
    assert products.loc["x", "distinct_buyers"] == 2
    assert products.loc["x", "reorder_rate"] == pytest.approx(1 / 3)
    pairs = users  # the purchase arrays are in the same row as the statistics: one read per user
    assert list(pairs.loc["a", "item_ids"]) == ["x", "y", "z"]
    assert list(pairs.loc["a", "times_bought"]) == [2, 1, 1]
    assert list(pairs.loc["a", "orders_since_last_bought"]) == [1, 2, 0]
    assert list(pairs.loc["a", "orders_since_first_bought"]) == [2, 2, 0]
    as_of = pd.Timestamp("2024-01-11", tz="UTC") + pd.Timedelta(microseconds=1)
    assert all((t["event_timestamp"] == as_of).all() for t in tables.values())


def test_a_snapshot_sees_only_purchases_before_its_cutoff() -> None:
    early, late = pd.Timestamp("2024-01-05", tz="UTC"), pd.Timestamp("2024-01-12", tz="UTC")
    tables = compute_feature_tables(tiny_log(), cutoffs=[early, late])
    users = tables["user_stats"].set_index(["user_id", "event_timestamp"])
    assert users.loc[("a", early), "orders"] == 1
    assert users.loc[("a", late), "orders"] == 3
    assert ("b", early) in users.index  # b bought on 2024-01-03
    products = tables["product_stats"].set_index(["item_id", "event_timestamp"])
    assert ("z", early) not in products.index
    assert products.loc[("x", early), "purchases"] == 2  # a on 01-01, b on 01-03


def test_online_store_serves_one_row_per_user_with_arrays(synthetic_workspace: Path) -> None:
    from endcap.features.store import OnlineFeatures

    online = OnlineFeatures(Workspace(synthetic_workspace))
    row = online.user("u1")
    assert row["orders"] == 6
    assert len(row["item_ids"]) == len(row["times_bought"]) == len(row["orders_since_last_bought"]) > 0
    assert online.user("nobody")["orders"] is None
    products = online.products(["i0", "missing"])
    assert products.loc[0, "purchases"] > 0
    assert products.loc[1].isna().all()


def test_feast_cli_accepts_the_feature_repo(synthetic_workspace: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "features").mkdir(parents=True)
    for table in (synthetic_workspace / "features").glob("*.parquet"):
        (workspace / "features" / table.name).write_bytes(table.read_bytes())
    feast = str(Path(sys.executable).parent / "feast")
    result = subprocess.run(
        [feast, "-c", str(FEATURE_REPO), "apply"],
        env={**os.environ, "ENDCAP_WORKSPACE": str(workspace)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (workspace / "feast" / "registry.db").exists()
    listing = subprocess.run(
        [feast, "-c", str(FEATURE_REPO), "feature-views", "list"],
        env={**os.environ, "ENDCAP_WORKSPACE": str(workspace)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    for view in ("user_stats", "product_stats"):
        assert view in listing.stdout


def test_an_unreadable_online_store_names_the_file_and_the_fix(tmp_path: Path) -> None:
    from endcap.errors import FailedPrecondition
    from endcap.features.sqlite_rows import SqliteRows

    missing = tmp_path / "feast" / "online.db"
    rows = SqliteRows(missing, "endcap_user_stats", lambda user_id: user_id.encode(), ["orders"])
    with pytest.raises(FailedPrecondition, match=r"online\.db .*run 'endcap features'"):
        rows.read("u1")


def _online_rows(store: object, view: object) -> list[tuple[object, ...]]:
    import sqlite3
    from contextlib import closing

    from endcap.features.sqlite_rows import feast_table

    database, table, _ = feast_table(store, view, view.entity_columns[0].name)  # type: ignore[attr-defined]
    columns = "entity_key, feature_name, value, value_text, event_ts, created_ts"
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute(f'SELECT {columns} FROM "{table}" ORDER BY entity_key, feature_name').fetchall()


def test_the_bulk_writer_stores_what_feasts_own_writer_stores(tmp_path: Path) -> None:
    import sqlite3
    from contextlib import closing

    from conftest import make_generic_log
    from endcap.data.ingest import ingest, load_interactions
    from endcap.feature_repo import definitions
    from endcap.features.sqlite_rows import feast_table
    from endcap.features.sqlite_writer import bulk_writer
    from endcap.features.store import build_features, open_store

    log = make_generic_log(users=40, items=30, baskets=4)
    odd = pd.DataFrame(  # a one-basket user (no gap between orders) and ids beyond ASCII
        {"user_id": ["ü-1", "ü-1"], "item_id": ["é", "x y"], "timestamp": ["1999-12-31T23:00:00Z"] * 2}
    )
    pd.concat([log, odd], ignore_index=True).to_csv(tmp_path / "log.csv", index=False)
    workspace = Workspace.resolve(tmp_path / "ws")
    ingest(tmp_path / "log.csv", workspace)
    build_features(workspace, load_interactions(workspace))
    store = open_store(workspace)
    views = {view.name: store.get_feature_view(view.name) for view in definitions.build(workspace.root).views()}
    for name, view in views.items():
        assert bulk_writer(store, view) is not None  # the embedded store is written in bulk
        written = _online_rows(store, view)
        assert len(written) == len(view.features) * load_interactions(workspace)[view.entity_columns[0].name].nunique()
        lists = [text for _, feature, _, text, _, _ in written if feature == "item_ids"]
        assert len(lists) == (len(written) // len(view.features) if name == definitions.USER_STATS else 0)
        assert all(text is None for text in lists)  # Feast keeps no text for a list
        offline = pd.read_parquet(workspace.features / f"{name}.parquet")
        newest = offline[offline["event_timestamp"] == offline["event_timestamp"].max()]
        database, table, _ = feast_table(store, view, view.entity_columns[0].name)
        with closing(sqlite3.connect(database)) as connection, connection:
            connection.execute(f'DELETE FROM "{table}"')
        store.write_to_online_store(name, newest)  # Feast's own writer, the same rows
        assert _online_rows(store, view) == written
