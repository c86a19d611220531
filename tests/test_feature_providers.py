"""A third party's feature provider, fed by its own Feast view: point-in-time in training and
validation, from the online store in serving, recorded in the model version, and worth its
column: a discount that predicts what shoppers buy moves the validation NDCG."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from endcap.config import EndcapConfig
from endcap.data.ingest import ingest, load_interactions
from endcap.errors import FailedPrecondition
from endcap.feature_parity import parity_rows
from endcap.features.store import OnlineFeatures, build_features
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.release.validated_training import train
from endcap.serving.model import load_serving_model
from endcap.serving.pipeline import Pipeline
from endcap.workspace import Workspace

START = pd.Timestamp("1998-03-02", tz="UTC")
"""Baskets on days 0..9 after START, every shopper on the same days (afternoons). One promotion
runs from the middle of day 7 to the middle of day 8, the next from the middle of day 8 on: the
first is visible (point-in-time) to day 8's baskets alone, the second to day 9's."""
FIRST_OFFER = [f"p{i}" for i in range(5)]
SECOND_OFFER = [f"p{i}" for i in range(5, 10)]
OFFERS = {8: FIRST_OFFER, 9: SECOND_OFFER}


class DealsFeatures(endcap.FeatureProvider):
    """``deals.discount``: the product's current discount from the shop's ``deals`` view."""

    def product_references(self) -> tuple[str, ...]:
        return ("deals:discount",)

    def names(self) -> tuple[str, ...]:
        return ("deals.discount",)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return np.nan_to_num(products[ids], copy=True)


class DealsPlugin:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(DealsFeatures, type_name="deals")

    @endcap.hookimpl
    def endcap_feast_objects(self, features_dir: Path) -> list[Any]:
        from endcap.feature_repo.definitions import product
        from feast import FeatureView, Field, FileSource
        from feast.types import Float32

        source = FileSource(
            name="deals_source", path=str(features_dir / "deals.parquet"), timestamp_field="event_timestamp"
        )
        return [
            FeatureView(
                name="deals",
                entities=[product],
                ttl=timedelta(days=3650),
                schema=[Field(name="discount", dtype=Float32)],
                source=source,
            )
        ]


def promotion_log(users: int = 70, seed: int = 3) -> pd.DataFrame:
    """Staples bought all along; promoted products almost never before the promotion and by most
    shoppers once it runs."""
    rng = np.random.default_rng(seed)
    regular = [f"r{i}" for i in range(30)]
    rows = []
    for user in range(users):
        staples = rng.choice(regular, size=5, replace=False)
        for day in range(10):
            when = START + timedelta(days=day, hours=14 + user % 6)
            chosen = set(rng.choice(staples, size=3, replace=False)) | {str(rng.choice(regular))}
            if day in OFFERS:
                chosen |= set(rng.choice(OFFERS[day], size=2, replace=False))
            elif rng.random() < 0.1:
                chosen.add(str(rng.choice(FIRST_OFFER + SECOND_OFFER)))
            rows += [(f"shopper-{user:03d}", item, when.isoformat()) for item in sorted(chosen)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def config(with_deals: bool) -> EndcapConfig:
    features = {"deals": {"type": "deals"}} if with_deals else {}
    return EndcapConfig.model_validate(
        {
            "candidates": {"popularity": {"type": "popularity"}, "repurchase": {"type": "repurchase"}},
            "features": {**EndcapConfig().model_dump()["features"], **features},
            "monitors": {},
            "serving": {"similar_items_source": "popularity"},
        }
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("deals")
    promotion_log().to_csv(root / "log.csv", index=False)
    workspace = Workspace.resolve(root / "ws")
    ingest(root / "log.csv", workspace)
    workspace.features.mkdir(parents=True, exist_ok=True)
    write_deals(workspace.features, load_interactions(workspace))
    build_features(
        workspace, load_interactions(workspace), PluginHost(config(True), extra_plugins={"deals": DealsPlugin()})
    )
    return workspace


def host(with_deals: bool) -> PluginHost:
    return PluginHost(config(with_deals), extra_plugins={"deals": DealsPlugin()})


def test_a_provider_that_predicts_the_label_moves_validation_and_is_served(shop: Workspace) -> None:
    plain = train(shop, host(False), promote=False)
    dealt = train(shop, host(True))
    assert dealt.validation is not None and plain.validation is not None
    gain = dealt.validation["ndcg@10"] - plain.validation["ndcg@10"]
    assert gain > 0.05, f"validation NDCG@10 {plain.validation['ndcg@10']:.4f} → {dealt.validation['ndcg@10']:.4f}"

    saved = json.loads((ModelRegistry(shop.models).path(dealt.version) / "manifest.json").read_text())
    assert set(saved["configuration"]["features"]) == {*EndcapConfig().features, "deals"}  # the defaults kept

    model = load_serving_model(shop, host(True), OnlineFeatures(shop))
    online = OnlineFeatures(shop)
    pipeline = Pipeline(model, online.user, EndcapConfig().serving)
    _, record = pipeline.recommend(pipeline.make_query("shopper-001", 10))
    assert record.features is not None and record.features.names[-1] == "deals.discount"
    discount = record.features.column("deals.discount")
    on_offer = np.isin(record.features.ids, model.item_indices(SECOND_OFFER))  # the first offer has ended
    assert on_offer.any() and (discount[on_offer] == pytest.approx(0.3)) and not discount[~on_offer].any()


def test_a_model_whose_provider_is_gone_is_refused_with_its_name(shop: Workspace) -> None:
    train(shop, host(True), validate=False)
    with pytest.raises(FailedPrecondition, match=r"feature providers \['deals'\].*features:"):
        load_serving_model(shop, host(False), OnlineFeatures(shop))


def write_deals(features_dir: Path, log: pd.DataFrame) -> None:
    """The shop's promotions: the first offer from the middle of day 7 to the middle of day 8,
    the second from then on."""
    day = timedelta(days=1)
    starts, ends = START + 7.5 * day, START + 8.5 * day
    pd.DataFrame(
        [(item, 0.3, starts) for item in FIRST_OFFER]
        + [(item, 0.0, ends) for item in FIRST_OFFER]
        + [(item, 0.3, ends) for item in SECOND_OFFER],
        columns=["item_id", "discount", "event_timestamp"],
    ).astype({"discount": "float32"}).to_parquet(features_dir / "deals.parquet")


def test_every_provider_column_is_the_same_offline_and_online(tmp_path: Path) -> None:
    """Every shopper's last basket is on the same day, so the training examples' point-in-time
    features as of that day and a server's online features on the log without that day describe
    the same moment: each candidate's row must be identical, column for column."""
    shoppers = ["shopper-000", "shopper-017", "shopper-042"]
    compared = parity_rows(host(True), tmp_path, shoppers, log=promotion_log(), write_data=write_deals)
    for rows in compared:
        assert rows.names[-1] == "deals.discount" and len(rows.offline) > 0
        np.testing.assert_allclose(rows.online, rows.offline, rtol=1e-5, atol=1e-6)
    discounts = np.concatenate([rows.offline[:, -1] for rows in compared])
    assert (discounts > 0).any(), "the second offer is on at that moment"


def test_cadence_counts_each_users_rhythm_with_a_product_in_orders() -> None:
    from endcap.plugins.ranking_features import CadenceFeatures
    from endcap.types import Query, UserFeatures

    # item 2: bought 3 times, first 8 orders ago, every 3 orders, last 2 orders ago; item 5 once
    user = UserFeatures(
        stats={"orders": 9.0},
        items=np.array([2, 5], dtype=np.int32),
        item_stats={
            "times_bought": np.array([3.0, 1.0], np.float32),
            "orders_since_last_bought": np.array([2.0, 0.0], np.float32),
            "orders_since_first_bought": np.array([8.0, 0.0], np.float32),
        },
    )
    provider = CadenceFeatures("cadence", {})
    ids = np.array([5, 2, 9], dtype=np.int32)
    block = provider.compute(Query("u", 0, 10), user, ids, np.zeros((10, 0), np.float32))
    assert provider.names() == ("cadence.interval_orders", "cadence.due_ratio", "cadence.rate_since_first")
    np.testing.assert_allclose(block[1], [3.0, 1.0, 3 / 9])
    assert (block[0] == -1.0).all() and (block[2] == -1.0).all()  # bought once, never bought: unknown


def test_calendar_counts_days_from_when_the_shopper_is_answered(tmp_path: Path) -> None:
    from endcap.plugins.ranking_features import CalendarFeatures
    from endcap.types import Query, UserFeatures

    # last order on day 100 (usual gap 7 days); item 2 bought on days 80, 90, 100; item 5 once, on day 95
    user = UserFeatures(
        stats={"orders": 5.0, "avg_days_between_orders": 7.0, "last_order_day": 100.0},
        items=np.array([2, 5], dtype=np.int32),
        item_stats={
            "times_bought": np.array([3.0, 1.0], np.float32),
            "last_bought_day": np.array([100.0, 95.0], np.float32),
            "first_bought_day": np.array([80.0, 95.0], np.float32),
        },
    )
    provider = CalendarFeatures("calendar", {})
    ids = np.array([2, 5, 9], dtype=np.int32)
    at_day_114 = Query("u", 0, 10, as_of=114 * 86_400.0)
    block = provider.compute(at_day_114, user, ids, np.zeros((10, 0), np.float32))
    np.testing.assert_allclose(block[:, :2], [[14.0, 2.0]] * 3)  # two usual gaps since the last order
    np.testing.assert_allclose(block[0, 2:], [14.0, 1.4])  # bought every 10 days, last 14 days ago
    assert block[1, 2] == 19.0 and block[1, 3] == -1.0 and (block[2, 2:] == -1.0).all()
    # without a time of its own, a query is answered as of the newest day the training log knows
    interactions = pd.DataFrame({"timestamp": pd.to_datetime([104 * 86_400, 103 * 86_400], unit="s", utc=True)})
    catalog = endcap.Catalog(np.array(["u"]), np.array([str(i) for i in range(10)]))
    data = endcap.TrainingData(catalog, interactions, sp.csr_matrix((1, 10), dtype=np.float32))
    assert provider.fit(data, tmp_path) == {"data_until_day": 104.0}
    fresh = CalendarFeatures("calendar", {})
    fresh.load(endcap.ModelContext(catalog, data.user_items, tmp_path))
    undated = fresh.compute(Query("u", 0, 10), user, ids, np.zeros((10, 0), np.float32))
    assert undated[0, 0] == 4.0 and undated[0, 2] == 4.0
    # a version trained before the calendar existed has no clock: the user's last order is the day
    older = CalendarFeatures("calendar", {})
    older.load(endcap.ModelContext(catalog, data.user_items, tmp_path / "trained-without-it"))
    assert older.compute(Query("u", 0, 10), user, ids, np.zeros((10, 0), np.float32))[0, 0] == 0.0
