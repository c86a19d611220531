"""The plugin author's test kit: a pytest plugin with fixtures and contract test classes.

Subclass the contract for your component kind, return your plugin module from
``make_plugin()``, name the registered type, and the contract's tests run against it::

    from endcap.testing import CandidateGeneratorContract
    import endcap_deals

    class TestDeals(CandidateGeneratorContract):
        type_name = "deals"
        config = {"max_items": 20}

        def make_plugin(self):
            return endcap_deals

Fixtures: ``endcap_training_data`` (a small generated purchase log as the components see it),
``endcap_workspace`` (a real workspace: log ingested, Feast features materialized) and
``endcap_server`` (a factory starting ``endcap serve`` on a free port with your ``endcap.yaml``).
The package registers this module under the ``pytest11`` entry point, so installing Endcap makes
the fixtures available; the contracts are imported explicitly.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit runs its own threads
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import endcap
import numpy as np
import pandas as pd
import pytest
import yaml
from endcap.config import EndcapConfig
from endcap.plugin_host import PluginHost
from endcap.types import Candidates, Component, FeatureMatrix, ModelContext, Query, StageTimings, TrainingData
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

# -- data -------------------------------------------------------------------------------------


def purchase_log(users: int = 30, items: int = 40, baskets: int = 5, seed: int = 0) -> pd.DataFrame:
    """A generic-format log (``user_id,item_id,timestamp``) with power-law popularity and
    per-user staples, the shape of a grocery log."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1
    popularity /= popularity.sum()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user in range(users):
        staples = rng.choice(items, size=3, replace=False)
        for basket in range(baskets):
            when = start + pd.Timedelta(days=7 * basket + user % 5, hours=user % 12)
            chosen = set(rng.choice(items, size=4, replace=False, p=popularity).tolist())
            chosen |= {int(s) for s in staples if rng.random() < 0.8}
            rows += [(f"u{user}", f"i{item}", when.isoformat()) for item in sorted(chosen)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


FEATURE_NAMES = ("source.popularity", "product.purchases", "user_product.times_bought")


def training_data(**shape: int) -> TrainingData:
    """:func:`purchase_log` validated and indexed exactly as ``endcap train`` does, with synthetic
    ranking examples (label = the first feature is high) for rankers that learn."""
    from dataclasses import replace

    from endcap.data.ingest import read_purchase_log
    from endcap.data.training_data import build_training_data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.csv"
        purchase_log(**shape).to_csv(path, index=False)
        frame, _ = read_purchase_log(path)
    data = build_training_data(frame)
    rng = np.random.default_rng(2)
    groups = np.full(data.catalog.n_users, 20, dtype=np.int32)
    values = rng.random((int(groups.sum()), len(FEATURE_NAMES))).astype(np.float32)
    examples = endcap.RankingExamples(
        names=FEATURE_NAMES,
        values=values,
        labels=(values[:, 0] > 0.8).astype(np.float32),
        groups=groups,
        user_ids=tuple(data.catalog.user_ids.tolist()),
    )
    return replace(data, ranking_examples=examples)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def endcap_training_data() -> TrainingData:
    return training_data()


@pytest.fixture
def endcap_workspace(tmp_path: Path) -> Path:
    """A workspace with a small generated log ingested and its features materialized in Feast."""
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features
    from endcap.workspace import Workspace

    log_path = tmp_path / "log.csv"
    purchase_log().to_csv(log_path, index=False)
    workspace = Workspace.resolve(tmp_path / "workspace")
    ingest(log_path, workspace)
    build_features(workspace, load_interactions(workspace), PluginHost(EndcapConfig()))
    return workspace.root


@pytest.fixture
def endcap_server(endcap_workspace: Path) -> Iterator[Callable[[dict[str, Any]], str]]:
    """``endcap_server(config)`` writes ``config`` as ``endcap.yaml``, trains, serves on a free port
    and returns the address; every server is stopped (SIGTERM) after the test. The server's log
    is ``serve-PORT.log`` in the workspace, and its end is shown when the server fails to start. The model is
    trained without validation and made current with ``promote --force``: a server for contract
    tests, whatever the plugin's quality (the promotion gate judges that in a real workspace)."""
    processes: list[subprocess.Popen[bytes]] = []
    executable = str(Path(sys.executable).parent / "endcap")

    def start(config: dict[str, Any]) -> str:
        (endcap_workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
        workspace = ["--workspace", str(endcap_workspace)]
        for step in (["features"], ["train", "--no-promote", "--no-validate"], ["promote", "--force"]):
            done = subprocess.run([executable, *step, *workspace], capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise AssertionError(f"endcap {step[0]} failed:\n{done.stderr}")
        port = free_port()
        log = endcap_workspace / f"serve-{port}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [executable, "serve", "--port", str(port), *workspace], stdout=sink, stderr=subprocess.STDOUT
            )
        processes.append(process)
        try:
            wait_until_serving(f"127.0.0.1:{port}", process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ({log}) ends:\n{log.read_text(errors='replace')[-4000:]}") from None
        return f"127.0.0.1:{port}"

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def wait_until_serving(target: str, process: subprocess.Popen[Any], timeout: float = 120.0) -> None:
    """Block until the server at ``target`` reports SERVING; fail if ``process`` exits first."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # grpc_health ships no type stubs
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"endcap serve exited with {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"endcap serve at {target} not SERVING after {timeout:.0f}s")


# -- contracts ------------------------------------------------------------------------------


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

    def build(self, data: TrainingData, directory: Path) -> Any:
        """Register the plugin in a fresh host, build the component from ``config`` and fit it, then
        load what it saved into a fresh instance, as serving does. What ``fit`` returns must be a
        mapping that JSON can write (it goes into the model manifest)."""
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
        component.load(ModelContext(data.catalog, data.user_items, directory))
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
        assert isinstance(self.build(endcap_training_data, tmp_path), Component)


def _query(data: TrainingData, user_index: int, k: int = 10) -> Query:
    user_id = str(data.catalog.user_ids[user_index]) if user_index >= 0 else "unknown-user"
    return Query(user_id=user_id, user_index=user_index, k=k)


def _user(data: TrainingData, user_index: int) -> endcap.UserFeatures:
    if user_index < 0:
        return endcap.UserFeatures(stats=MappingProxyType({}))
    row = data.user_items[user_index]
    order = np.argsort(row.indices)
    items = row.indices[order].astype(np.int32)
    items.flags.writeable = False
    times_bought = row.data[order].astype(np.float32)
    times_bought.flags.writeable = False
    orders = float(data.interactions.query("user_index == @user_index")["basket_index"].max() + 1)
    return endcap.UserFeatures(  # read-only, as serving hands them over
        stats=MappingProxyType({"orders": orders}),
        items=items,
        item_stats=MappingProxyType({"times_bought": times_bought}),
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

    def test_known_user(self, endcap_training_data: TrainingData, tmp_path: Path) -> None:
        generator = self.build(endcap_training_data, tmp_path)
        result = self.timed(
            lambda: generator.generate(_query(endcap_training_data, 0), _user(endcap_training_data, 0), 20)
        )
        self._check(result, 20, endcap_training_data.catalog.n_items)

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


class FilterContract(ComponentContract):
    kind = "filters"

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
