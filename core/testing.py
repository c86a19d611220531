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

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit runs its own threads
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import pandas as pd
import pytest
import yaml
from endcap.config import EndcapConfig
from endcap.plugin_host import PluginHost
from endcap.types import (
    TrainingData,
)
from endcap.workspace import Workspace

# -- data -------------------------------------------------------------------------------------


def purchase_log(
    users: int = 30, items: int = 40, baskets: int = 5, seed: int = 0, same_days: bool = False
) -> pd.DataFrame:
    """A generic-format log (``user_id,item_id,timestamp``) with power-law popularity and
    per-user staples, the shape of a grocery log. Shoppers shop weekly on days of their own, or
    with ``same_days`` all on the same consecutive days (in the afternoon)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1
    popularity /= popularity.sum()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for user in range(users):
        staples = rng.choice(items, size=3, replace=False)
        for basket in range(baskets):
            if same_days:
                when = start + pd.Timedelta(days=basket, hours=13 + user % 6)
            else:
                when = start + pd.Timedelta(days=7 * basket + user % 5, hours=user % 12)
            chosen = set(rng.choice(items, size=4, replace=False, p=popularity).tolist())
            chosen |= {int(s) for s in staples if rng.random() < 0.8}
            rows += [(f"u{user}", f"i{item}", when.isoformat()) for item in sorted(chosen)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


FEATURE_NAMES = ("source.popularity", "product.purchases", "user_product.times_bought")


def training_data(**shape: Any) -> TrainingData:
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

    log_path = tmp_path / "log.csv"
    purchase_log().to_csv(log_path, index=False)
    workspace = Workspace.resolve(tmp_path / "workspace")
    ingest(log_path, workspace)
    config = EndcapConfig()
    build_features(workspace, load_interactions(workspace), PluginHost(config), feature_store=config.feature_store)
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
        prepare_model(Workspace(endcap_workspace))
        workspace = ["--workspace", str(endcap_workspace)]
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


def prepare_model(workspace: Workspace) -> None:
    """What ``endcap features``, ``endcap train --no-validate --no-promote`` and ``endcap promote
    --force`` do with the workspace's ``endcap.yaml``, in this process (the plugin under test is
    importable here as in the server)."""
    from endcap.config import load_config
    from endcap.data.ingest import load_interactions
    from endcap.features.store import build_features
    from endcap.model_versions import ModelRegistry
    from endcap.release.promotion import promote
    from endcap.release.validated_training import train

    config = load_config(workspace.root)
    host = PluginHost(config)
    build_features(workspace, load_interactions(workspace), host, feature_store=config.feature_store)
    manifest = train(workspace, host, promote=False, validate=False)
    promote(ModelRegistry(workspace.models), manifest.version, force=True)


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


from endcap.contracts import (  # noqa: E402  (the contracts, importable from here as documented)
    CandidateGeneratorContract,
    ComponentContract,
    FeatureProviderContract,
    FilterContract,
    MonitorContract,
    RankerContract,
)

__all__ = [
    "CandidateGeneratorContract",
    "ComponentContract",
    "FeatureProviderContract",
    "FilterContract",
    "MonitorContract",
    "RankerContract",
    "endcap_server",
    "endcap_training_data",
    "endcap_workspace",
    "free_port",
    "purchase_log",
    "training_data",
    "wait_until_serving",
]
