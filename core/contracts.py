"""The contract test classes of :mod:`endcap.testing`, one per component kind: subclass yours,
name the registered type, and return your plugin from ``make_plugin()``. They check behaviour
(a generator proposes for a user it knows, a filter drops what it claims, a provider's block is
finite, fitted state survives a fresh instance) as well as shapes."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit runs its own threads
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import endcap
import numpy as np
import pandas as pd
import pytest
from endcap.config import EndcapConfig
from endcap.data.integer_codes import utc_microseconds
from endcap.features.tables import DAY_MICROSECONDS
from endcap.plugin_host import PluginHost
from endcap.types import (
    Candidates,
    FeatureMatrix,
    ModelContext,
    Query,
    StageTimings,
    TrainingData,
    read_only,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

if TYPE_CHECKING:
    from endcap.serving.model import ProductReader

# -- data -------------------------------------------------------------------------------------


class ComponentContract:
    """Checks shared by every kind. Subclass a kind's contract, not this one."""

    type_name: ClassVar[str] = ""
    """The type name your plugin registers (``registry.add(cls, type_name=...)``)."""
    config: ClassVar[dict[str, Any]] = {}
    """Settings for the component, as they would appear in ``endcap.yaml``."""
    budget_ms: ClassVar[float] = 50.0
    """Time one call may take in these checks."""
    kind: ClassVar[str] = ""

    def make_plugin(self) -> object:
        """Return the plugin (usually your module) exactly as the entry point loads it."""
        raise NotImplementedError("return your plugin module from make_plugin()")

    def write_feature_data(self, features_dir: Path, log: pd.DataFrame) -> None:
        """Override to write your plugin's Feast data files under ``features_dir`` for ``log`` (the
        generated log a check uses: users ``u0``…, products ``i0``…). The checks then build a real
        workspace with your plugin's hooks and hand your component its product features
        (``ModelContext.product_features``) from that store. By default nothing is written and
        components load with ``product_features=None``."""

    def _product_features(self, data: TrainingData, directory: Path) -> ProductReader | None:
        if type(self).write_feature_data is ComponentContract.write_feature_data:
            return None
        from endcap.feature_parity import feature_workspace
        from endcap.features.store import OnlineFeatures
        from endcap.testing import purchase_log

        config = EndcapConfig()
        host = PluginHost(config, extra_plugins={"under_test": self.make_plugin()})
        root = directory.parent / f"{directory.name}-feature-store"
        workspace = feature_workspace(root, purchase_log(), host, self.write_feature_data, purchase_log())
        online = OnlineFeatures(workspace, config.feature_store)
        item_ids = list(data.catalog.item_ids)

        def read(references: Sequence[str]) -> pd.DataFrame:
            frame: pd.DataFrame = online.product_features(references, item_ids)
            return frame

        return read

    def build(self, data: TrainingData, directory: Path) -> Any:
        """Register the plugin in a fresh host, build the component from ``config`` and fit it, then
        load what it saved into a fresh instance, as serving does (with your Feast data when
        :meth:`write_feature_data` writes some). What ``fit`` returns must be a mapping that JSON
        can write (it goes into the model manifest)."""
        host = PluginHost(EndcapConfig(plugins=()), extra_plugins={"under_test": self.make_plugin()})
        registered = host.registry.get(self.kind, self.type_name)
        assert registered is not None, (
            f"the plugin registers no {self.kind} type {self.type_name!r}; "
            f"it registers {[t.type_name for t in host.types_of('under_test')]}"
        )
        config = registered.cls.Config.model_validate(self.config)
        params = registered.cls("under_test", config).fit(data, directory)
        assert isinstance(params, Mapping), f"fit() returned {type(params).__name__}, not a mapping"
        try:
            json.dumps(dict(params))
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"fit() returned parameters the model manifest cannot record: {exc}") from None
        component = registered.cls("under_test", config)
        component.load(ModelContext(data.catalog, data.user_items, directory, self._product_features(data, directory)))
        return component

    def timed(self, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        elapsed = (time.perf_counter() - started) * 1000
        assert elapsed <= self.budget_ms, f"one call took {elapsed:.1f} ms, over the {self.budget_ms} ms budget"
        return result

    def test_hooks_are_valid_and_the_type_is_registered(
        self, endcap_training_data: TrainingData, tmp_path: Path
    ) -> None:
        component = self.build(endcap_training_data, tmp_path)
        assert isinstance(component.config, endcap.ComponentConfig), "Config must subclass endcap.ComponentConfig"
        with pytest.raises(ValidationError):  # a misspelt setting in endcap.yaml is refused, not ignored
            type(component).Config.model_validate({**self.config, "no_such_setting": 1})


def _query(data: TrainingData, user_index: int, k: int = 10) -> Query:
    user_id = str(data.catalog.user_ids[user_index]) if user_index >= 0 else "unknown-user"
    return Query(user_id=user_id, user_index=user_index, k=k)


def _user(data: TrainingData, user_index: int) -> endcap.UserFeatures:
    """The user's features as serving hands them over: every statistic and per-item array of the
    online row, read-only."""
    if user_index < 0:
        return endcap.UserFeatures(stats=MappingProxyType({}))
    lines = data.interactions[data.interactions["user_index"] == user_index]
    baskets = lines.groupby("basket_index")
    orders = float(lines["basket_index"].max() + 1)
    starts = np.sort(pd.DatetimeIndex(baskets["timestamp"].min()).to_numpy("datetime64[s]"))
    days = np.diff(starts).astype(np.float64) / 86400
    day = utc_microseconds(lines["timestamp"]) / DAY_MICROSECONDS
    per_item = (
        lines.assign(day=day)
        .groupby("item_index")
        .agg(
            times=("basket_index", "nunique"),
            last=("basket_index", "max"),
            first=("basket_index", "min"),
            last_day=("day", "max"),
            first_day=("day", "min"),
        )
    )
    stats = {
        "orders": orders,
        "avg_basket_size": float(baskets.size().mean()),
        "avg_days_between_orders": float(days.mean()) if days.size else 0.0,
        "distinct_items": float(len(per_item)),
        "last_order_day": float(day.max()),
    }
    item_stats = {
        "times_bought": read_only(per_item["times"].to_numpy(np.float32)),
        "orders_since_last_bought": read_only((orders - 1 - per_item["last"]).to_numpy(np.float32)),
        "orders_since_first_bought": read_only((orders - 1 - per_item["first"]).to_numpy(np.float32)),
        "last_bought_day": read_only(per_item["last_day"].to_numpy(np.float32)),
        "first_bought_day": read_only(per_item["first_day"].to_numpy(np.float32)),
    }
    return endcap.UserFeatures(
        stats=MappingProxyType(stats),
        items=read_only(per_item.index.to_numpy(np.int32)),
        item_stats=MappingProxyType(item_stats),
    )


class CandidateGeneratorContract(ComponentContract):
    kind = "candidates"

    def _check(self, result: Candidates, n: int, n_items: int) -> None:
        assert isinstance(result, Candidates), f"generate() returned {type(result).__name__}, not Candidates"
        assert result.ids.dtype == np.int32 and result.scores.dtype == np.float32
        assert len(result) <= n, f"asked for {n}, got {len(result)}"
        assert np.unique(result.ids).size == len(result), "duplicate item indices"
        assert ((result.ids >= 0) & (result.ids < n_items)).all(), "item indices outside the catalogue"
        assert np.isfinite(result.scores).all(), "scores must be finite"

    proposes_for_known_users: ClassVar[bool] = True
    """Whether the generator proposes something for a user it was trained on (checked); set to
    ``False`` for one that may rightly answer nothing (e.g. only products on offer)."""

    def test_known_user(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        generator = self.build(endcap_training_data, tmp_path)
        result = self.timed(
            lambda: generator.generate(_query(endcap_training_data, 0), _user(endcap_training_data, 0), 20)
        )
        self._check(result, 20, endcap_training_data.catalog.n_items)
        if self.proposes_for_known_users:
            assert len(result) > 0, "proposed nothing for a user it was trained on"

    def test_unknown_user(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        generator = self.build(endcap_training_data, tmp_path)
        result = self.timed(
            lambda: generator.generate(_query(endcap_training_data, -1), _user(endcap_training_data, -1), 20)
        )
        self._check(result, 20, endcap_training_data.catalog.n_items)

    def test_n_larger_than_the_catalogue(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        generator = self.build(endcap_training_data, tmp_path)
        n = endcap_training_data.catalog.n_items * 3
        self._check(
            generator.generate(_query(endcap_training_data, 1, k=n), _user(endcap_training_data, 1), n),
            n,
            endcap_training_data.catalog.n_items,
        )

    def test_deterministic_on_read_only_inputs(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        """The user's arrays and mappings are read-only, as in serving: a generator that writes
        to them raises here."""
        generator = self.build(endcap_training_data, tmp_path)
        query, user = _query(endcap_training_data, 2), _user(endcap_training_data, 2)
        first, second = generator.generate(query, user, 15), generator.generate(query, user, 15)
        assert np.array_equal(first.ids, second.ids) and np.allclose(first.scores, second.scores)

    def test_a_block_gets_what_each_user_gets(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        """``generate_block`` (batch jobs) answers every row exactly as ``generate`` answers it."""
        generator = self.build(endcap_training_data, tmp_path)
        block = _block(endcap_training_data)
        n = np.array([15, 3, 20, 0, 40][: len(block)], dtype=np.int64)
        answers = self.timed(partial(generator.generate_block, block, n))
        assert isinstance(answers, endcap.CandidateBlock), f"returned {type(answers).__name__}, not CandidateBlock"
        assert answers.offsets.size == len(block) + 1, "one run of candidates per row of the block"
        for row, (query, user) in enumerate(zip(block.queries, block.users, strict=True)):
            alone = generator.generate(query, user, int(n[row]))
            assert np.array_equal(answers.row(row).ids, alone.ids), f"row {row}: other items than generate()"
            assert np.array_equal(answers.row(row).scores, alone.scores), f"row {row}: other scores than generate()"


BLOCK_USERS = (0, 1, -1, 2, 3)
"""A batch job's block in the contracts: known users, a stranger among them."""


def _block(data: TrainingData, user_indices: tuple[int, ...] = BLOCK_USERS) -> endcap.UserBlock:
    users = [u for u in user_indices if u < data.catalog.n_users]
    return endcap.UserBlock(tuple(_query(data, u) for u in users), tuple(_user(data, u) for u in users))


def _features(data: TrainingData, ids: np.ndarray) -> FeatureMatrix:
    rng = np.random.default_rng(1)
    values = rng.random((ids.size, 3)).astype(np.float32)
    values.flags.writeable = False
    ids = ids.astype(np.int32)
    ids.flags.writeable = False
    return FeatureMatrix(
        ids=ids, names=("source.popularity", "product.purchases", "user_product.times_bought"), values=values
    )


class RankerContract(ComponentContract):
    kind = "ranker"

    def test_scores_every_candidate(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        ranker = self.build(endcap_training_data, tmp_path)
        for ids in (np.arange(10), np.array([3, 3, 5]), np.arange(0)):  # normal, duplicate ids, empty
            features = _features(endcap_training_data, ids)
            scores = np.asarray(self.timed(partial(ranker.score, _query(endcap_training_data, 0), features)))
            assert scores.shape == (ids.size,) and np.isfinite(scores).all()

    def test_deterministic(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        ranker = self.build(endcap_training_data, tmp_path)
        features = _features(endcap_training_data, np.arange(8))
        query = _query(endcap_training_data, 0)
        assert np.allclose(ranker.score(query, features), ranker.score(query, features))

    def test_a_block_is_scored_as_each_request(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        """``score_block`` (batch jobs) gives every row's candidates the scores ``score`` gives them."""
        ranker = self.build(endcap_training_data, tmp_path)
        block = _block(endcap_training_data)
        offsets = np.concatenate(([0], np.cumsum([6, 0, 3, 9, 1][: len(block)]))).astype(np.int64)
        features = _features(endcap_training_data, np.arange(int(offsets[-1])) % endcap_training_data.catalog.n_items)
        scores = np.asarray(self.timed(partial(ranker.score_block, block, features, offsets)))
        assert scores.shape == features.ids.shape
        for row, query in enumerate(block.queries):
            rows = slice(int(offsets[row]), int(offsets[row + 1]))
            part = FeatureMatrix(features.ids[rows], features.names, features.values[rows])
            assert np.array_equal(scores[rows], np.asarray(ranker.score(query, part), dtype=np.float32)), f"row {row}"


class FilterContract(ComponentContract):
    kind = "filters"
    expected_dropped: ClassVar[list[str]] = []
    """Item ids (of :func:`purchase_log`: ``i0`` … ``i39``) your ``config`` makes the filter drop;
    checked to be dropped, and every other item kept. Leave empty to check shapes only."""

    def test_drops_what_it_claims_and_keeps_the_rest(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        if not self.expected_dropped:
            pytest.skip("set expected_dropped to check what the filter removes")
        rule = self.build(endcap_training_data, tmp_path)
        ids = np.arange(endcap_training_data.catalog.n_items, dtype=np.int32)
        ids.flags.writeable = False
        kept = np.asarray(rule.keep(_query(endcap_training_data, 0), ids), dtype=bool)
        catalogue = endcap_training_data.catalog.item_ids
        dropped = sorted(str(item) for item in catalogue[~kept])
        assert dropped == sorted(self.expected_dropped), f"dropped {dropped}, expected {sorted(self.expected_dropped)}"

    def test_mask_per_candidate(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        rule = self.build(endcap_training_data, tmp_path)
        for ids in (np.arange(12, dtype=np.int32), np.array([4, 4, 7], dtype=np.int32), np.empty(0, np.int32)):
            ids.flags.writeable = False
            mask = np.asarray(self.timed(partial(rule.keep, _query(endcap_training_data, 0), ids)))
            assert mask.dtype == bool and mask.shape == ids.shape
            boost = rule.boost(_query(endcap_training_data, 0), ids)
            assert boost is None or np.asarray(boost).shape == ids.shape

    def test_deterministic(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        rule = self.build(endcap_training_data, tmp_path)
        ids = np.arange(12, dtype=np.int32)
        query = _query(endcap_training_data, 0)
        assert np.array_equal(rule.keep(query, ids), rule.keep(query, ids))


class FeatureProviderContract(ComponentContract):
    kind = "features"

    def test_same_columns_offline_and_online(self, tmp_path: Path) -> None:
        """Your plugin's hooks build a real workspace (its Feast views applied); each shopper's
        rows in the point-in-time training examples must equal a server's rows at that moment."""
        from endcap.feature_parity import parity_config, parity_rows

        config = parity_config({"under_test": {"type": self.type_name, **self.config}})
        plugin = self.make_plugin()
        built_in = getattr(plugin, "__name__", "").startswith("endcap.plugins.")  # loaded with the defaults
        host = PluginHost(config, extra_plugins={} if built_in else {"under_test": plugin})
        for rows in parity_rows(host, tmp_path, ["u0", "u7", "u13"], write_data=self.write_feature_data):
            assert rows.online.shape == rows.offline.shape, f"{rows.user_id}: other candidates online"
            differ = ~np.isclose(rows.online, rows.offline, rtol=1e-5, atol=1e-6).all(axis=0)
            assert not differ.any(), (
                f"{rows.user_id}: columns {[n for n, d in zip(rows.names, differ, strict=True) if d]} differ "
                "between training examples and serving"
            )

    def _products(self, provider: Any, data: TrainingData, fill: float | None) -> np.ndarray:
        width = len(provider.product_references())
        rng = np.random.default_rng(2)
        values = (
            rng.random((data.catalog.n_items, width)) if fill is None else np.full((data.catalog.n_items, width), fill)
        )
        return read_only(values.astype(np.float32))

    def test_names_are_unique_and_prefixed(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        names = tuple(self.build(endcap_training_data, tmp_path).names())
        assert names and len(set(names)) == len(names), f"names must be non-empty and unique: {names}"
        assert all("." in name for name in names), f"prefix every column with the provider's name: {names}"

    def test_one_finite_block_per_request(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        provider = self.build(endcap_training_data, tmp_path)
        width = len(provider.names())
        for user_index in (0, -1):  # a known user and a stranger
            for fill in (None, np.nan):  # product data, and a store that holds none
                products = self._products(provider, endcap_training_data, fill)
                for ids in (np.arange(12, dtype=np.int32), np.empty(0, np.int32)):
                    ids.flags.writeable = False
                    call = partial(
                        provider.compute,
                        _query(endcap_training_data, user_index),
                        _user(endcap_training_data, user_index),
                        ids,
                        products,
                    )
                    block = np.asarray(self.timed(call))
                    assert block.shape == (ids.size, width), f"block shape {block.shape}, expected {(ids.size, width)}"
                    assert np.isfinite(block).all(), "feature values must be finite (map missing data to a number)"

    def test_deterministic_on_read_only_inputs(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        provider = self.build(endcap_training_data, tmp_path)
        products = self._products(provider, endcap_training_data, None)
        ids = read_only(np.arange(10, dtype=np.int32))
        query, user = _query(endcap_training_data, 1), _user(endcap_training_data, 1)
        first = np.asarray(provider.compute(query, user, ids, products))
        assert np.array_equal(first, np.asarray(provider.compute(query, user, ids, products)))

    def test_a_block_gets_what_each_request_gets(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        """``compute_block`` (batch jobs) writes every row's candidates exactly as ``compute`` does."""
        provider = self.build(endcap_training_data, tmp_path)
        products = self._products(provider, endcap_training_data, None)
        block = _block(endcap_training_data)
        n_items = endcap_training_data.catalog.n_items
        lengths = [12, 0, 5, n_items, 3][: len(block)]
        ids = read_only(np.concatenate([np.arange(length) % n_items for length in lengths]).astype(np.int32))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        values = np.asarray(self.timed(partial(provider.compute_block, block, ids, offsets, products)))
        assert values.shape == (ids.size, len(provider.names())), f"block shape {values.shape}"
        for row, (query, user) in enumerate(zip(block.queries, block.users, strict=True)):
            rows = slice(int(offsets[row]), int(offsets[row + 1]))
            alone = np.asarray(provider.compute(query, user, ids[rows], products), dtype=np.float32)
            differ = ~(np.isclose(values[rows], alone, rtol=0, atol=0, equal_nan=True)).all(axis=0)
            assert not differ.any(), f"row {row}: columns {np.flatnonzero(differ).tolist()} differ from compute()"


class MonitorContract(ComponentContract):
    kind = "monitors"

    def test_observes_without_raising(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        monitor = self.build(endcap_training_data, tmp_path)
        scores = np.array([1.0, 0.5], dtype=np.float32)
        scores.flags.writeable = False
        record = endcap.RequestRecord(
            request_id="r1",
            query=_query(endcap_training_data, 0),
            model_version="v-test",
            candidates_per_source={"popularity": 10},
            item_ids=("i1", "i2"),
            scores=scores,
            timings=StageTimings({"rank": 0.1}),
        )
        registry = CollectorRegistry()
        monitor.register_metrics(registry)
        self.timed(partial(monitor.on_request, record))
        self.timed(partial(monitor.on_error, "r2", None, ValueError("bad input")))
        self.timed(partial(monitor.on_events, (endcap.Event("u0", "i1", "purchase", 1, 0.0),)))
        self.timed(partial(monitor.on_call, "Recommend", "OK", 0.002))
        # what it registered still scrapes, as /metrics would, after it observed every kind of call
        exposition = generate_latest(registry).decode()
        names = [family.name for family in text_string_to_metric_families(exposition)]  # raises if malformed
        assert len(names) == len(set(names)), f"metric families exposed twice: {sorted(names)}"
