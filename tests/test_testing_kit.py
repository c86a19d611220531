"""The plugin authors' contracts run against Endcap's own built-in plugins, and catch a broken one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import endcap
import numpy as np
import pytest
from endcap.plugins import (
    als,
    blocklist,
    item2item,
    lightgbm_ranker,
    linear_ranker,
    popularity,
    ranking_features,
    repurchase,
    structlog_monitor,
    tifuknn,
)
from endcap.testing import (
    CandidateGeneratorContract,
    FeatureProviderContract,
    FilterContract,
    MonitorContract,
    RankerContract,
)


class TestPopularity(CandidateGeneratorContract):
    type_name = "popularity"

    def make_plugin(self) -> object:
        return popularity


class TestRepurchase(CandidateGeneratorContract):
    type_name = "repurchase"

    def make_plugin(self) -> object:
        return repurchase


class TestTifuKnn(CandidateGeneratorContract):
    type_name = "tifuknn"
    config = {"neighbours_grid": [5], "alpha_grid": [0.8], "group_decay_grid": [0.7]}

    def make_plugin(self) -> object:
        return tifuknn


class TestAls(CandidateGeneratorContract):
    type_name = "als"
    config = {"factors": 8, "iterations": 3}

    def make_plugin(self) -> object:
        return als


class TestItemToItem(CandidateGeneratorContract):
    type_name = "item2item"

    def make_plugin(self) -> object:
        return item2item


class TestLinearRanker(RankerContract):
    type_name = "linear"

    def make_plugin(self) -> object:
        return linear_ranker


class TestLightGbmRanker(RankerContract):
    type_name = "lightgbm"
    config = {"rounds": 20}

    def make_plugin(self) -> object:
        return lightgbm_ranker


class TestBlocklist(FilterContract):
    type_name = "blocklist"
    config = {"item_ids": ["i1", "i7"]}
    expected_dropped = ["i1", "i7"]

    def make_plugin(self) -> object:
        return blocklist


class TestUserStatsFeatures(FeatureProviderContract):
    type_name = "user_stats"

    def make_plugin(self) -> object:
        return ranking_features


class TestProductStatsFeatures(FeatureProviderContract):
    type_name = "product_stats"

    def make_plugin(self) -> object:
        return ranking_features


class TestUserProductFeatures(FeatureProviderContract):
    type_name = "user_product"

    def make_plugin(self) -> object:
        return ranking_features


class TestCadenceFeatures(FeatureProviderContract):
    type_name = "cadence"

    def make_plugin(self) -> object:
        return ranking_features


class TestCalendarFeatures(FeatureProviderContract):
    type_name = "calendar"

    def make_plugin(self) -> object:
        return ranking_features


class TestStructlogMonitor(MonitorContract):
    type_name = "structlog"

    def make_plugin(self) -> object:
        return structlog_monitor


class DuplicatingCandidates(endcap.CandidateGenerator):
    def generate(self, query: Any, user: Any, n: int) -> endcap.Candidates:
        return endcap.Candidates(np.array([1, 1], dtype=np.int32), np.array([1.0, 0.5], dtype=np.float32))


class BrokenPlugin:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(DuplicatingCandidates, type_name="dupes")


class BrokenContract(CandidateGeneratorContract):
    type_name = "dupes"

    def make_plugin(self) -> object:
        return BrokenPlugin()


def test_the_contract_catches_duplicate_ids(endcap_training_data: endcap.TrainingData, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="duplicate item indices"):
        BrokenContract().test_known_user(endcap_training_data, tmp_path)


def test_the_contract_names_a_type_the_plugin_does_not_register(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    class Misnamed(CandidateGeneratorContract):
        type_name = "popular"

        def make_plugin(self) -> object:
            return popularity

    with pytest.raises(AssertionError, match=r"registers no candidates type 'popular'; it registers \['popularity'\]"):
        Misnamed().test_known_user(endcap_training_data, tmp_path)


class _SingleComponentPlugin:
    def __init__(self, cls: type[endcap.Component], type_name: str) -> None:
        self.cls, self.type_name = cls, type_name

    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(self.cls, type_name=self.type_name)


def _contract(cls: type[endcap.Component]) -> CandidateGeneratorContract:
    class Contract(CandidateGeneratorContract):
        type_name = "under_check"

        def make_plugin(self) -> object:
            return _SingleComponentPlugin(cls, "under_check")

    return Contract()


class ScribblingCandidates(endcap.CandidateGenerator):
    """Writes to the user's statistics, which serving hands over read-only."""

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        if "times_bought" in user.item_stats:
            user.item_stats["times_bought"][:] = 0
        return endcap.Candidates(np.arange(min(n, 3), dtype=np.int32), np.ones(min(n, 3), dtype=np.float32))


class NumpyParamsCandidates(endcap.CandidateGenerator):
    """Returns numpy values from fit, which the model manifest (JSON) cannot hold."""

    def fit(self, data: endcap.TrainingData, directory: Path) -> dict[str, Any]:
        return {"items": np.int64(data.catalog.n_items), "weights": np.ones(2)}

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates.empty()


class MemoryOnlyCandidates(endcap.CandidateGenerator):
    """Keeps what it learned in memory instead of saving it under ``directory``."""

    def fit(self, data: endcap.TrainingData, directory: Path) -> dict[str, Any]:
        self.top = np.arange(3, dtype=np.int32)
        return {}

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates(self.top[:n], np.ones(self.top[:n].size, dtype=np.float32))


def test_the_contract_catches_a_generator_that_writes_to_its_inputs(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="read-only"):
        _contract(ScribblingCandidates).test_deterministic_on_read_only_inputs(endcap_training_data, tmp_path)


def test_the_contract_catches_parameters_the_manifest_cannot_record(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match="model manifest cannot record"):
        _contract(NumpyParamsCandidates).test_known_user(endcap_training_data, tmp_path)


def test_the_contract_serves_from_what_fit_saved_not_from_memory(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    with pytest.raises(AttributeError, match="top"):
        _contract(MemoryOnlyCandidates).test_known_user(endcap_training_data, tmp_path)


class KeepsEverything(endcap.Filter):
    """Claims to drop a recalled product and drops nothing."""

    def keep(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return np.ones(ids.size, dtype=bool)


class ProposesNothing(endcap.CandidateGenerator):
    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates.empty()


class NaNFeatures(endcap.FeatureProvider):
    """Passes the store's missing values through as NaN."""

    def product_references(self) -> tuple[str, ...]:
        return ("stock:level",)

    def names(self) -> tuple[str, ...]:
        return ("stock.level",)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return products[ids]


def test_the_contract_catches_a_filter_that_keeps_everything(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    class Contract(FilterContract):
        type_name = "keeps_everything"
        expected_dropped = ["i3"]

        def make_plugin(self) -> object:
            return _SingleComponentPlugin(KeepsEverything, "keeps_everything")

    with pytest.raises(AssertionError, match=r"dropped \[\], expected \['i3'\]"):
        Contract().test_drops_what_it_claims_and_keeps_the_rest(endcap_training_data, tmp_path)


def test_the_contract_catches_a_generator_that_proposes_nothing(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match="proposed nothing for a user it was trained on"):
        _contract(ProposesNothing).test_known_user(endcap_training_data, tmp_path)


def test_the_contract_catches_a_provider_that_passes_missing_values_on(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    class Contract(FeatureProviderContract):
        type_name = "nan_features"

        def make_plugin(self) -> object:
            return _SingleComponentPlugin(NaNFeatures, "nan_features")

    Contract().test_names_are_unique_and_prefixed(endcap_training_data, tmp_path)
    with pytest.raises(AssertionError, match="must be finite"):
        Contract().test_one_finite_block_per_request(endcap_training_data, tmp_path)


class ServingOnlyFeatures(endcap.FeatureProvider):
    """Reads the workspace's log in ``load``: there when serving, absent while training examples
    are built, so its column means something else offline than online."""

    def load(self, context: endcap.ModelContext) -> None:
        self.bought = np.zeros(context.catalog.n_items, dtype=np.float32)
        if context.workspace is not None:
            self.bought[:] = 1.0

    def names(self) -> tuple[str, ...]:
        return ("serving_only.flag",)

    def compute(
        self, query: endcap.Query, user: endcap.UserFeatures, ids: np.ndarray, products: np.ndarray
    ) -> np.ndarray:
        return self.bought[ids][:, None]


def test_the_contract_catches_a_column_that_differs_between_training_and_serving(tmp_path: Path) -> None:
    class Contract(FeatureProviderContract):
        type_name = "serving_only"

        def make_plugin(self) -> object:
            return _SingleComponentPlugin(ServingOnlyFeatures, "serving_only")

    with pytest.raises(
        AssertionError, match=r"columns \['serving_only.flag'\] differ between training examples and serving"
    ):
        Contract().test_same_columns_offline_and_online(tmp_path)


class OfferSource(endcap.CandidateGenerator):
    """Proposes the products on offer, read from the plugin's own Feast view when it loads."""

    def load(self, context: endcap.ModelContext) -> None:
        self.ids = np.empty(0, dtype=np.int32)
        if context.product_features is not None:
            discount = context.product_features(["offers:discount"])["discount"].to_numpy(np.float32, na_value=0.0)
            self.ids = np.flatnonzero(discount > 0).astype(np.int32)

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates(self.ids[:n], np.ones(self.ids[:n].size, dtype=np.float32))


class OffersPlugin:
    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        registry.add(OfferSource, type_name="offers")

    @endcap.hookimpl
    def endcap_feast_objects(self, features_dir: Path) -> list[Any]:
        from datetime import timedelta

        from endcap.feature_repo.definitions import product
        from feast import FeatureView, Field, FileSource
        from feast.types import Float32

        source = FileSource(name="offers_source", path=str(features_dir / "offers.parquet"), timestamp_field="ts")
        schema = [Field(name="discount", dtype=Float32)]
        return [FeatureView(name="offers", entities=[product], ttl=timedelta(days=3650), schema=schema, source=source)]


class OffersContract(CandidateGeneratorContract):
    type_name = "offers"

    def make_plugin(self) -> object:
        return OffersPlugin()

    def write_feature_data(self, features_dir: Path, log: Any) -> None:
        import pandas as pd

        when = pd.Timestamp(log["timestamp"].min()).tz_convert("UTC") + pd.Timedelta(hours=1)
        frame = pd.DataFrame({"item_id": ["i3", "i5"], "discount": [0.5, 0.2], "ts": [when, when]})
        frame.astype({"discount": "float32"}).to_parquet(features_dir / "offers.parquet")


def test_a_generator_fed_by_its_own_feast_data_is_checked_with_that_data(
    endcap_training_data: endcap.TrainingData, tmp_path: Path
) -> None:
    OffersContract().test_known_user(endcap_training_data, tmp_path / "with")

    class WithoutData(OffersContract):
        write_feature_data = CandidateGeneratorContract.write_feature_data

    with pytest.raises(AssertionError, match="proposed nothing"):
        WithoutData().test_known_user(endcap_training_data, tmp_path / "without")
