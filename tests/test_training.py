from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import endcap
import pytest
from conftest import prepared_workspace
from endcap.config import EndcapConfig
from endcap.errors import FailedPrecondition, NotFound
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.release.validated_training import train
from endcap.workspace import Workspace


class TrainsPopularityItself:
    """Implements the training hook for one component and leaves the rest to Endcap."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @endcap.hookimpl
    def endcap_train_component(self, component: Any, data: Any, directory: Path) -> Any:
        self.seen.append(component.name)
        if component.name == "popularity":
            component.fit(data, directory)
            (directory / "extra.txt").write_text("written by the hook")
            return {"trained_by": "hook"}
        return None


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return prepared_workspace(tmp_path, users=12, items=20, baskets=3)


def test_train_writes_a_complete_version_and_makes_it_current(workspace: Workspace) -> None:
    plugin = TrainsPopularityItself()
    manifest = train(workspace, PluginHost(EndcapConfig(), extra_plugins={"hooked": plugin}))
    registry = ModelRegistry(workspace.models)
    assert registry.current() == manifest.version
    directory = registry.path()
    assert (directory / "catalog.npz").exists() and (directory / "user_items.npz").exists()
    saved = json.loads((directory / "manifest.json").read_text())
    assert saved["data_fingerprint"] == json.loads(workspace.ingest_manifest.read_text())["fingerprint"]
    assert saved["users"] == 12 and saved["training_rows"] > 0
    assert saved["components"]["candidates/als"]["params"]["factors"] == 64
    # what a rescore trains with
    assert saved["configuration"]["training"] == {"label_baskets": 1, "ranking_users": 20_000}
    assert saved["components"]["candidates/popularity"]["params"] == {"trained_by": "hook"}
    assert (directory / "components/candidates/popularity/extra.txt").exists()
    monitors = {"request_log", "metrics", "health", "online_quality", "drift", "recorder"}
    providers = {"user", "product", "user_product", "cadence", "calendar"}  # feature providers are components too
    assert set(plugin.seen) == {
        "popularity",
        "repurchase",
        "tifuknn",
        "als",
        "item2item",
        "ranker",
        *monitors,
        *providers,
    }
    # the validation model, then the model itself; candidates also once more each for the ranker's examples
    assert plugin.seen.count("ranker") == 2 and plugin.seen.count("als") == 4
    assert saved["validation"]["users"] == 12 and 0 < saved["validation"]["ndcg@10"] <= 1
    assert saved["components"]["ranker/ranker"]["type"] == "lightgbm"
    assert not list(workspace.models.glob(".staging-*"))


def test_no_promote_keeps_the_current_version(workspace: Workspace) -> None:
    host = PluginHost(EndcapConfig())
    first = train(workspace, host, validate=False)
    second = train(workspace, host, promote=False, validate=False)
    registry = ModelRegistry(workspace.models)
    assert registry.current() == first.version
    assert registry.versions() == sorted([first.version, second.version])
    registry.set_current(second.version)
    assert registry.current() == second.version
    with pytest.raises(NotFound, match="no model version 'v0'"):
        registry.set_current("v0")


class RecordsEarlierFits:
    """Trains ALS itself, writing a file and returning params that name the run's fits so far, and
    records the ``earlier_fit`` each of TIFU-KNN's and ALS's fits is given."""

    def __init__(self) -> None:
        self.fits = 0
        self.given: list[tuple[str, Any, str | None]] = []

    @endcap.hookimpl
    def endcap_train_component(self, component: Any, data: Any, directory: Path) -> Any:
        if component.name not in ("als", "tifuknn"):
            return None
        earlier = data.earlier_fit
        written = (earlier.directory / "fit.txt").read_text() if earlier and component.name == "als" else None
        self.given.append((component.name, None if earlier is None else dict(earlier.params), written))
        if component.name == "tifuknn":
            return component.fit(data, directory)
        self.fits += 1
        component.fit(data, directory)
        (directory / "fit.txt").write_text(f"fit {self.fits}")
        return {"fit": self.fits}


def test_the_whole_logs_fit_is_given_its_own_fit_on_the_history(workspace: Workspace) -> None:
    plugin = RecordsEarlierFits()
    manifest = train(workspace, PluginHost(EndcapConfig(), extra_plugins={"records": plugin}), validate=False)
    # first on the history before the label baskets (nothing earlier), then on the whole log
    assert [(name, params, written) for name, params, written in plugin.given if name == "als"] == [
        ("als", None, None),
        ("als", {"fit": 1}, "fit 1"),
    ]
    tifu_history, tifu_whole = [(params) for name, params, _ in plugin.given if name == "tifuknn"]
    assert tifu_history is None and tifu_whole is not None
    chosen = manifest.components["candidates/tifuknn"].params
    assert chosen["tuned_on"] == "history before the label baskets"
    for name in ("group_decay", "neighbours", "alpha", "tuning_ndcg@10"):
        assert chosen[name] == tifu_whole[name]


def test_failed_training_leaves_no_partial_version(workspace: Workspace) -> None:
    class Broken:
        @endcap.hookimpl
        def endcap_train_component(self, component: Any, data: Any, directory: Path) -> Any:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        train(workspace, PluginHost(EndcapConfig(), extra_plugins={"broken": Broken()}), validate=False)
    assert ModelRegistry(workspace.models).versions() == []
    assert not list(workspace.models.glob(".staging-*"))


def test_training_without_a_log_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="run 'endcap ingest PATH'"):
        train(Workspace.resolve(tmp_path), PluginHost(EndcapConfig()))
