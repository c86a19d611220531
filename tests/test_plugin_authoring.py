"""A third party's path: scaffold a plugin, pass its tests, install it, see it change answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import endcap
import grpc
import pandas as pd
import pytest
import yaml
from conftest import prepared_workspace, run_cli, start_server, stop_server
from endcap.cli.scaffold import KINDS, scaffold
from endcap.config import EndcapConfig
from endcap.errors import PluginError
from endcap.plugin_host import PluginHost
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def pip_install(package: Path, target: Path) -> None:
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def run_pytest(directory: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [PYTHON, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", str(directory / "tests")],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_scaffolded_plugin_passes_its_own_tests_before_it_is_installed(tmp_path: Path) -> None:
    root = scaffold("my_source", "candidates", tmp_path)
    assert (root / "pyproject.toml").read_text().count('my_source = "endcap_my_source"') == 1
    result = run_pytest(root, pythonpath=root)  # importable, not installed: the live-server test waits
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TestMySourceCandidates::test_known_user PASSED" in result.stdout and "1 skipped" in result.stdout
    with pytest.raises(endcap.errors.InvalidArgument, match="comma-separated, each once"):
        scaffold("twice", "filter,filter", tmp_path)


def test_scaffold_refuses_bad_names_and_existing_directories(tmp_path: Path) -> None:
    with pytest.raises(endcap.errors.InvalidArgument, match="must start with a lowercase letter"):
        scaffold("Bad-Name", "candidates", tmp_path)
    scaffold("fine", "filter", tmp_path)
    with pytest.raises(endcap.errors.InvalidArgument, match="already exists"):
        scaffold("fine", "filter", tmp_path)


def test_an_installed_package_of_every_kind_is_discovered_and_each_takes_part_in_live_answers(
    tmp_path: Path,
) -> None:
    root = scaffold("shop", ",".join(KINDS), tmp_path / "src")
    assert sorted(p.name for p in (root / "tests").glob("test_*.py")) == sorted(f"test_shop_{k}.py" for k in KINDS)
    site = tmp_path / "site"
    pip_install(root, site)
    listing = run_cli("plugins", "--all", workspace=tmp_path / "ws", env={"PYTHONPATH": str(site)}).stdout
    assert "shop 0.1.0  (endcap_shop)  [installed, not enabled" in listing
    assert "    hooks: endcap_api_version, endcap_register_components" in listing
    result = run_pytest(root, pythonpath=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" not in result.stdout
    for kind in KINDS:  # each kind's contract, then its component inside a live server
        contract = f"TestShop{kind.capitalize()}"
        assert (
            f"test_shop_{kind}.py::{contract}::test_hooks_are_valid_and_the_type_is_registered PASSED" in result.stdout
        )
        assert f"test_shop_{kind}.py::test_served_by_a_live_endcap PASSED" in result.stdout


def test_incompatible_hook_api_version_is_refused() -> None:
    class FromTheFuture:
        @endcap.hookimpl
        def endcap_api_version(self) -> int:
            return 2

    with pytest.raises(PluginError, match=r"plugin 'future' .* hook API version 2, but this Endcap speaks version 1"):
        PluginHost(EndcapConfig(), extra_plugins={"future": FromTheFuture()})


def test_trace_hooks_logs_every_hook_call(tmp_path: Path) -> None:
    result = run_cli("plugins", "--trace-hooks", workspace=tmp_path)
    traced = [line for line in result.stderr.splitlines() if '"hook_call"' in line]
    assert any('"endcap_register_components"' in line and '"popularity"' in line for line in traced)
    assert all('"ms"' in line for line in traced)


def test_plugin_feast_objects_are_applied_with_endcaps_own(tmp_path: Path) -> None:
    from endcap.feature_repo.definitions import product
    from endcap.features.store import OnlineFeatures
    from feast import FeatureView, Field, FileSource
    from feast.types import Int64

    class Shelf:
        @endcap.hookimpl
        def endcap_feast_objects(self, features_dir: Path) -> list[Any]:
            source = FileSource(path=str(features_dir / "shelf.parquet"), timestamp_field="event_timestamp")
            return [
                FeatureView(name="shelf", entities=[product], schema=[Field(name="aisle", dtype=Int64)], source=source)
            ]

    features = tmp_path / "ws" / "features"
    features.mkdir(parents=True)
    pd.DataFrame(
        {"item_id": ["i0", "i1"], "aisle": [4, 7], "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC")}
    ).to_parquet(features / "shelf.parquet")
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features
    from endcap.testing import purchase_log
    from endcap.workspace import Workspace

    workspace = Workspace.resolve(tmp_path / "ws")
    purchase_log().to_csv(tmp_path / "log.csv", index=False)
    ingest(tmp_path / "log.csv", workspace)
    build_features(
        workspace, load_interactions(workspace), PluginHost(EndcapConfig(), extra_plugins={"shelf": Shelf()})
    )
    aisles = OnlineFeatures(workspace).product_features(["shelf:aisle"], ["i1", "i0", "nope"])
    assert aisles["aisle"].tolist()[:2] == [7, 4] and pd.isna(aisles["aisle"].tolist()[2])


def recommend(target: str, user_id: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.RecommendationServiceStub(channel).Recommend(
            pb.RecommendRequest(user_id=user_id, k=10), timeout=10
        )
    return [item.item_id for item in reply.items]


def test_example_promotions_plugin_changes_live_answers(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip_install(ROOT / "examples" / "endcap-promotions", site)
    env = {"PYTHONPATH": str(site)}
    workspace = prepared_workspace(tmp_path, users=30, items=40, baskets=5).root
    enabled = [*EndcapConfig().plugins, "promotions"]
    config_file = workspace / "endcap.yaml"
    config_file.write_text(
        yaml.safe_dump({"plugins": enabled, "filters": {"shop": {"type": "promotions", "boost": 50.0}}})
    )

    # what the shop sells today, as its stock system would write it
    run_cli("train", workspace=workspace, env=env)
    config_file.write_text(yaml.safe_dump({"plugins": enabled}))
    plain = start_server(workspace, tmp_path, env)
    try:
        before = recommend(plain.target, "u1")
    finally:
        stop_server(plain)
    sold_out, promoted = before[0], before[-1]
    pd.DataFrame(
        {
            "item_id": [sold_out, promoted],
            "in_stock": [0, 1],
            "promotion_boost": [0.0, 1.0],
            "event_timestamp": pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1),
            "created_timestamp": pd.Timestamp.now(tz="UTC"),
        }
    ).astype({"promotion_boost": "float32"}).to_parquet(workspace / "features" / "product_availability.parquet")
    config_file.write_text(
        yaml.safe_dump({"plugins": enabled, "filters": {"shop": {"type": "promotions", "boost": 50.0}}})
    )
    assert "materialized" in run_cli("features", workspace=workspace, env=env).stdout

    ruled = start_server(workspace, tmp_path, env)
    try:
        after = recommend(ruled.target, "u1")
    finally:
        stop_server(ruled)
    assert sold_out not in after
    assert after[0] == promoted
    assert len(after) == 10
