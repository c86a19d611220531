"""The promotion gate through ``endcap train`` and ``endcap promote``: real Feast, real models."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_generic_log, run_cli
from endcap.model_versions import ModelRegistry

BAD_RANKER = """\
candidates: {replace_defaults: true, popularity: {type: popularity}}
ranker: {type: linear, weights: {source.popularity: -1.0}}   # the least popular first
serving: {similar_items_source: popularity}
"""
ITEM_TO_ITEM_ONLY = """\
candidates: {replace_defaults: true, popularity: {type: popularity}, item2item: {type: item2item}}
ranker: {type: linear, weights: {source.item2item: 1.0}}
serving: {similar_items_source: item2item}
"""


def trained_version(stdout: str) -> str:
    found = re.search(r"trained model (v\S+) on", stdout)
    assert found, stdout
    return found.group(1)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    make_generic_log(users=40, items=50, baskets=6).to_csv(tmp_path / "log.csv", index=False)
    run_cli("ingest", str(tmp_path / "log.csv"), workspace=tmp_path / "ws")
    run_cli("features", workspace=tmp_path / "ws")
    return tmp_path / "ws"


def test_train_refuses_a_model_worse_than_popularity_even_with_no_current(workspace: Path) -> None:
    (workspace / "endcap.yaml").write_text(BAD_RANKER)
    trained = run_cli("train", workspace=workspace, check=False)
    assert trained.returncode == 3, trained.stderr  # as 'endcap retrain' when the gate refuses
    version = trained_version(trained.stdout)
    assert f"written but not promoted: model {version} is not better than the popularity baseline" in trained.stdout
    assert re.search(r"ndcg@10 0\.\d{4} vs popularity \(G-TopFreq\) 0\.\d{4} on the same 40 users", trained.stdout)
    registry = ModelRegistry(workspace / "models")
    assert registry.current() is None and registry.versions() == [version]
    refused = run_cli("promote", workspace=workspace, check=False)
    assert refused.returncode == 1 and "not better than the popularity baseline" in refused.stderr
    assert "forced past the gate" in run_cli("promote", "--force", workspace=workspace).stdout
    assert registry.current() == version


def test_the_gate_compares_two_versions_on_the_same_holdout(workspace: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(workspace / "models")
    (workspace / "endcap.yaml").write_text(ITEM_TO_ITEM_ONLY)
    weak = run_cli("train", workspace=workspace)
    weak_version = trained_version(weak.stdout)
    assert "against popularity (G-TopFreq)" in weak.stdout and registry.current() == weak_version

    (workspace / "endcap.yaml").unlink()  # the default configuration: clearly better on the same baskets
    strong = run_cli("train", workspace=workspace)
    strong_version = trained_version(strong.stdout)
    compared = re.search(
        rf"against the current {weak_version}: ndcg@10 (0\.\d+) vs the current {weak_version} (0\.\d+) on the same "
        r"40 users \(difference \+(0\.\d+), 95% interval \[\+0\.\d+, \+0\.\d+\]; both recorded on this holdout\)",
        strong.stdout,
    )
    assert compared, strong.stdout
    assert float(compared.group(1)) > float(compared.group(2)) and registry.current() == strong_version
    assert registry.manifest(weak_version).holdout_fingerprint == registry.manifest(strong_version).holdout_fingerprint
    assert registry.manifest(strong_version).configuration["ranker"]["type"] == "lightgbm"

    back = run_cli("promote", weak_version, workspace=workspace, check=False)
    assert back.returncode == 1 and f"{weak_version} is worse than the current {strong_version}" in back.stderr
    assert "both recorded on this holdout" in back.stderr and registry.current() == strong_version

    # a new basket for everyone: a new holdout, on which the current configuration is trained again
    log = pd.read_csv(tmp_path / "log.csv")
    newest = pd.to_datetime(log["timestamp"]).groupby(log["user_id"]).transform("max")
    extra = log[pd.to_datetime(log["timestamp"]) == newest].copy()
    extra["timestamp"] = (pd.to_datetime(extra["timestamp"]) + pd.Timedelta(days=7)).map(pd.Timestamp.isoformat)
    extra.to_csv(tmp_path / "more.csv", index=False)
    run_cli("ingest", str(tmp_path / "more.csv"), "--append", workspace=workspace)
    run_cli("features", workspace=workspace)
    (workspace / "endcap.yaml").write_text(ITEM_TO_ITEM_ONLY)
    refused = run_cli("train", workspace=workspace, check=False)
    assert refused.returncode == 3, refused.stderr
    assert f"is worse than the current {strong_version}" in refused.stdout
    assert "the current configuration retrained on this holdout" in refused.stdout
    assert registry.current() == strong_version
