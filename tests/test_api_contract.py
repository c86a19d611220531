"""The committed gRPC stubs match protos/, every hook is documented, and Endcap calls every hook."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import endcap
import pluggy
from endcap import hookspecs
from endcap.config import EndcapConfig
from endcap.hookspecs import HOOK_API_VERSION
from endcap.plugin_host import PluginHost
from endcap.testing import purchase_log

ROOT = Path(__file__).resolve().parent.parent


def check_generated(tool: str) -> None:
    """``tools/<tool> --check`` exits 0: what it generates is committed and current."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_are_up_to_date() -> None:
    check_generated("generate_protos.py")


def hooks() -> list[tuple[str, object]]:
    return [(name, fn) for name, fn in vars(hookspecs).items() if name.startswith("endcap_") and callable(fn)]


def test_every_hook_is_a_spec_with_the_project_prefix() -> None:
    marker = pluggy.HookspecMarker("endcap").project_name + "_spec"
    assert hooks(), "no hooks found"
    for name, function in hooks():
        assert hasattr(function, marker), f"{name} is not decorated with @hookspec"


def test_every_hook_documents_each_argument_and_its_version() -> None:
    for name, function in hooks():
        doc = inspect.getdoc(function) or ""
        summary = doc.splitlines()[0] if doc else ""
        assert summary.endswith("."), f"{name}: the docstring must open with a one-line summary"
        for parameter in inspect.signature(function).parameters:
            assert f":param {parameter}:" in doc, f"{name}: document ':param {parameter}:'"
        assert ".. versionadded::" in doc, f"{name}: say in which version the hook appeared"
        annotations = inspect.get_annotations(function)
        assert "return" in annotations, f"{name}: annotate the return type"


def test_plugin_reference_is_up_to_date() -> None:
    check_generated("generate_docs.py")
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name, _ in hooks():
        assert f"### `{name}`" in text, f"docs/plugins.md does not document {name}"


class HookRecorder:
    """Implements every hook, records each call and its arguments, and changes nothing."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)

    @endcap.hookimpl
    def endcap_api_version(self) -> int:
        self.calls["endcap_api_version"].append({})
        return HOOK_API_VERSION

    @endcap.hookimpl
    def endcap_register_components(self, registry: Any) -> None:
        self.calls["endcap_register_components"].append({"registry": registry})

    @endcap.hookimpl
    def endcap_feast_objects(self, features_dir: Path) -> None:
        self.calls["endcap_feast_objects"].append({"features_dir": features_dir})

    @endcap.hookimpl
    def endcap_train_component(self, component: Any, data: Any, directory: Path) -> None:
        self.calls["endcap_train_component"].append({"component": component, "data": data, "directory": directory})


def test_every_hook_is_called_when_endcap_builds_features_and_trains(tmp_path: Path) -> None:
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features
    from endcap.training.fit import train
    from endcap.workspace import Workspace

    recorder = HookRecorder()
    config = EndcapConfig.model_validate(
        {"candidates": {"popularity": {"type": "popularity"}}, "ranker": {"type": "linear"}}
    )
    host = PluginHost(config, extra_plugins={"recorder": recorder})
    purchase_log(users=20, items=30, baskets=4).to_csv(tmp_path / "log.csv", index=False)
    workspace = Workspace.resolve(tmp_path / "ws")
    ingest(tmp_path / "log.csv", workspace)
    build_features(workspace, load_interactions(workspace), host)
    manifest = train(workspace, host)

    missing = {name for name, _ in hooks()} - set(recorder.calls)
    assert not missing, f"never called: {sorted(missing)} (a new hook? implement it in HookRecorder, drive it)"
    assert recorder.calls["endcap_api_version"] == [{}]
    [registering] = recorder.calls["endcap_register_components"]
    assert registering["registry"] is host.registry  # the registry the components are built from
    assert recorder.calls["endcap_feast_objects"] == [{"features_dir": workspace.features}]
    trained = {call["component"].name: call for call in recorder.calls["endcap_train_component"]}
    assert {key.split("/")[1] for key in manifest.components} == set(trained) >= {"popularity", "ranker"}
    version_dir = workspace.models / manifest.version
    for call in trained.values():
        staging = call["directory"].parents[2]  # the directory is <staging>/components/<kind>/<name>
        committed = version_dir / call["directory"].relative_to(staging)
        assert committed.is_dir(), f"{committed} is not in the committed version"
        assert call["data"].catalog.n_users == 20
    assert (version_dir / "components" / "candidates" / "popularity" / "popularity.npz").is_file()
