from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_generic_log
from endcap.config import EndcapConfig
from endcap.data.baskets import add_basket_index
from endcap.data.ingest import ingest, load_interactions
from endcap.evaluation.evaluate import evaluate, temporal_split
from endcap.evaluation.report import write_report
from endcap.plugin_host import PluginHost
from endcap.workspace import Workspace


def canonical_log(tmp_path: Path, **shape: int) -> pd.DataFrame:
    path = tmp_path / "log.csv"
    make_generic_log(**shape).to_csv(path, index=False)
    workspace = Workspace.resolve(tmp_path / "split")
    ingest(path, workspace)
    return load_interactions(workspace)


def test_temporal_split_holds_out_the_newest_baskets(tmp_path: Path) -> None:
    log = add_basket_index(canonical_log(tmp_path, users=10, items=15, baskets=4))
    short = log[log["user_id"] == "u0"].copy()
    short = short[short["basket_index"] < 2]  # u0 keeps two baskets: trains, is not evaluated
    log = pd.concat([log[log["user_id"] != "u0"], short])
    test = temporal_split(log, "test")
    validation = temporal_split(log, "validation")
    newest = log.groupby("user_id")["basket_index"].max()
    test_baskets = add_basket_index(log).merge(test.target[["user_id", "basket_id"]].drop_duplicates())
    assert (test_baskets.groupby("user_id")["basket_index"].max() == newest.drop("u0")).all()
    assert "u0" not in set(test.target["user_id"]) and "u0" in set(test.training["user_id"])
    assert (
        test.training["timestamp"]
        .groupby(test.training["user_id"])
        .max()
        .drop("u0")
        .lt(test.target.groupby("user_id")["timestamp"].min())
        .all()
    )
    assert len(validation.training) < len(test.training)
    assert not set(validation.target["basket_id"]) & set(validation.training["basket_id"])
    assert not set(test.target["basket_id"]) & set(validation.training["basket_id"])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("evaluation")
    log = canonical_log(root, users=40, items=50, baskets=6)
    workspace = Workspace.resolve(root / "ws")
    config = EndcapConfig()
    return evaluate(workspace, config, PluginHost(config), log), root, log


def test_evaluation_reports_baselines_ablations_and_the_pipeline(results) -> None:  # type: ignore[no-untyped-def]
    targets, _, _ = results
    assert [t.name for t in targets] == ["validation", "test"]
    test = targets[1]
    assert test.users == 40
    expected = {"G-TopFreq", "P-TopFreq", "pipeline", "merged candidates", "repurchase alone", "tifuknn alone"}
    assert expected <= set(test.systems)
    for system in test.systems.values():
        m = system.metrics
        assert 0.0 <= m["recall@10"] <= m["recall@20"] <= 1.0
        assert m["recall_repeat@10"] + m["recall_explore@10"] == pytest.approx(m["recall@10"])
        assert len(system.curve) == 20 and system.curve == sorted(system.curve)
        for key, interval in system.intervals.items():
            assert interval.low <= interval.mean <= interval.high and interval.mean == pytest.approx(m[key])
    assert set(test.systems["pipeline"].intervals) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20"}
    assert test.versus is not None and test.versus.reference not in ("pipeline", "merged candidates")
    reference = test.systems[test.versus.reference].metrics["ndcg@10"]
    assert reference == max(
        m.metrics["ndcg@10"] for s, m in test.systems.items() if s not in ("pipeline", "merged candidates")
    )
    assert test.versus.differences["ndcg@10"].mean == pytest.approx(
        test.systems["pipeline"].metrics["ndcg@10"] - reference
    )
    assert test.systems["P-TopFreq"].metrics["recall@10"] > test.systems["G-TopFreq"].metrics["recall@10"]
    assert test.systems["pipeline"].metrics["recall@10"] > test.systems["G-TopFreq"].metrics["recall@10"]
    assert test.candidate_recall["all sources"] >= max(
        v for k, v in test.candidate_recall.items() if k != "all sources"
    )


def test_report_files(results, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    targets, _, _ = results
    paths = write_report(targets, tmp_path / "report", "log.csv")
    text = paths["markdown"].read_text()
    assert "## Test basket — 40 users" in text and "| P-TopFreq |" in text and "Candidate recall" in text
    assert "95 % confidence intervals (bootstrap over the 40 users" in text
    assert f"the best single system, {targets[1].versus.reference} (by NDCG@10)" in text
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths["json"].read_text())
    assert data["targets"][1]["systems"]["pipeline"]["metrics"]["users"] == 40
    interval = data["targets"][1]["systems"]["pipeline"]["intervals"]["ndcg@10"]
    assert interval["low"] <= interval["mean"] <= interval["high"]
    assert data["targets"][1]["versus"]["better"] == targets[1].versus.better


def test_evaluation_workspaces_never_see_their_target(results) -> None:  # type: ignore[no-untyped-def]
    _, root, log = results
    for target in ("validation", "test"):
        trained_on = pd.read_parquet(root / "ws" / "evaluation" / target / "data" / "interactions.parquet")
        split = temporal_split(log, target)
        assert not set(split.target["basket_id"]) & set(trained_on["basket_id"])
        assert np.isin(split.training["basket_id"].unique(), trained_on["basket_id"].unique()).all()
