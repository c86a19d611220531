"""Model registry, promotion gate, `endcap models`, and the retrain job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import prepared_workspace, run_cli
from endcap.config import EndcapConfig
from endcap.data.events import EventLog
from endcap.data.ingest import load_interactions
from endcap.evaluation.intervals import paired_interval
from endcap.model_versions import Manifest, ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.release.promotion import GateRefused, promote
from endcap.release.retrain import retrain
from endcap.release.validation_record import HoldoutScores, save_holdout_scores
from endcap.types import Event


def commit_version(
    registry: ModelRegistry,
    version: str,
    ndcg: float | None,
    popularity: float = 0.05,
    fingerprint: str = "h" * 64,
    users: int = 50,
    configuration: dict | None = None,
) -> None:
    """A version whose validation recorded ``users`` users at ``ndcg`` (± a little, per user)
    and popularity at ``popularity``, on the holdout ``fingerprint``."""
    staging = registry.staging_dir()
    validation = {} if ndcg is None else {"ndcg@10": ndcg, "recall@10": ndcg / 2, "popularity_ndcg@10": popularity}
    if ndcg is not None:
        wobble = np.linspace(-0.02, 0.02, users)
        ids = np.array([f"u{i:03d}" for i in range(users)])
        save_holdout_scores(staging, HoldoutScores(ids, ndcg + wobble, popularity + wobble[::-1]))
    registry.commit(
        staging,
        Manifest(
            version,
            "2026-01-01T00:00:00+00:00",
            "f" * 64,
            "x",
            10,
            2,
            3,
            {},
            "0",
            validation,
            holdout_fingerprint=fingerprint if ndcg is not None else "",
            configuration=configuration or {},
        ),
    )


def test_gate_refuses_a_worse_version_unless_forced(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    commit_version(registry, "v1", 0.30)
    assert promote(registry).version == "v1"
    commit_version(registry, "v2", 0.25)
    with pytest.raises(
        GateRefused,
        match=r"v2 is worse than the current v1: ndcg@10 0.2500 vs the current v1 0.3000 on the same 50 users "
        r"\(difference -0.0500, 95% interval \[-0.0500, -0.0500\]; both recorded on this holdout\)",
    ):
        promote(registry, "v2")
    assert registry.current() == "v1"
    commit_version(registry, "v3", 0.31)
    done = promote(registry)  # newest by default
    assert done.version == "v3" and [c.reference for c in done.comparisons] == [
        "popularity (G-TopFreq)",
        "the current v1",
    ]
    assert promote(registry, "v2", force=True).previous == "v3"
    assert registry.current() == "v2"
    commit_version(registry, "v4", None)
    with pytest.raises(GateRefused, match="has no per-user validation values"):
        promote(registry, "v4")


def test_gate_refuses_a_model_no_better_than_popularity_even_with_no_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    commit_version(registry, "v1", 0.08, popularity=0.08)
    with pytest.raises(
        GateRefused, match=r"v1 is not better than the popularity baseline: ndcg@10 0.0800 vs popularity"
    ):
        promote(registry)
    assert registry.current() is None
    assert promote(registry, force=True).forced and registry.current() == "v1"


def test_gate_rescores_the_current_configuration_on_another_holdout(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    commit_version(registry, "v1", 0.30, fingerprint="a" * 64, configuration={"candidates": {}})
    promote(registry)
    commit_version(registry, "v2", 0.30, fingerprint="b" * 64)
    with pytest.raises(GateRefused, match="validated on different holdouts"):
        promote(registry, "v2")
    asked: list[tuple[str, str]] = []

    def rescore(candidate: Manifest, current: Manifest) -> np.ndarray:
        asked.append((candidate.version, current.version))
        return np.full(50, 0.40)  # the current configuration, retrained on v2's holdout, does better there

    with pytest.raises(GateRefused, match=r"worse than the current v1: .*the current configuration retrained"):
        promote(registry, "v2", rescore=rescore)
    assert asked == [("v2", "v1")] and registry.current() == "v1"
    done = promote(registry, "v2", rescore=lambda candidate, current: np.full(50, 0.30))
    assert done.comparisons[-1].difference == pytest.approx(0.0) and registry.current() == "v2"


def test_paired_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(3)
    candidate, reference = rng.random(200), rng.random(200)
    first = paired_interval(candidate, reference)
    assert first == paired_interval(candidate, reference)
    mean, low, high = first.mean, first.low, first.high
    assert low < mean < high and mean == pytest.approx(float(np.mean(candidate - reference)))
    assert paired_interval(candidate + 0.5, candidate).low == pytest.approx(0.5)


def test_cli_promote_and_models(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    commit_version(registry, "v1", 0.30)
    commit_version(registry, "v2", 0.20)
    assert "v2 is now current" in run_cli("promote", "v2", workspace=tmp_path).stdout
    better = run_cli("promote", "v1", workspace=tmp_path, check=False)
    assert better.returncode == 0  # v1 is better: promoted
    assert "against the current v2: ndcg@10 0.3000 vs the current v2 0.2000" in better.stdout
    worse = run_cli("promote", "v2", workspace=tmp_path, check=False)
    assert worse.returncode == 1 and "worse than the current v1" in worse.stderr
    listing = run_cli("models", workspace=tmp_path).stdout.splitlines()
    assert listing[1].startswith("  v1") is False and listing[1].startswith("* v1")
    assert "0.3000" in listing[1] and "0.2000" in listing[2]


def test_retrain_takes_new_purchases_and_is_idempotent(tmp_path: Path) -> None:
    workspace = prepared_workspace(tmp_path, users=40, items=50, baskets=5)
    log = load_interactions(workspace)
    host = PluginHost(EndcapConfig())
    messages: list[str] = []

    first = retrain(workspace, host, say=messages.append)
    assert first.version is not None and ModelRegistry(workspace.models).current() == first.version
    assert any("against popularity (G-TopFreq)" in m for m in messages)  # no current model: popularity only
    manifest = ModelRegistry(workspace.models).manifest()
    assert manifest.validation["ndcg@10"] > 0

    again = retrain(workspace, host, say=messages.append)
    assert again.skipped and again.version is None
    assert any("nothing new" in m for m in messages)

    EventLog(workspace.events_log).append(
        [
            Event("u1", "i3", "purchase", 1, 1_800_000_000.0),
            Event("u1", "i4", "view", 1, 1_800_000_000.0),
            Event("new-user", "i3", "purchase", 2, 1_800_000_100.0),
        ]
    )
    registry = ModelRegistry(workspace.models)
    second = retrain(workspace, host, say=messages.append)  # a new holdout: the current configuration is rebuilt on it
    assert second.version is not None and registry.current() == second.version
    assert any(
        "against the current" in m and "the current configuration retrained on this holdout" in m for m in messages
    )
    assert registry.manifest(second.version).holdout_fingerprint != manifest.holdout_fingerprint
    grown = load_interactions(workspace)
    assert len(grown) == len(log) + 2  # the two purchases, not the view
    assert "new-user" in set(grown["user_id"])
    offline = pd.read_parquet(workspace.features / "user_stats.parquet")  # the offline store for training
    assert "new-user" in set(offline["user_id"])
    state = json.loads((workspace.root / "data" / "retrain.json").read_text())
    assert state["event_offset"] == workspace.events_log.stat().st_size

    commit_version(registry, "v-unknown", 0.9)  # written by an earlier Endcap: no configuration to rebuild
    registry.set_current("v-unknown")
    EventLog(workspace.events_log).append([Event("u2", "i5", "purchase", 1, 1_800_000_200.0)])
    upgraded = retrain(workspace, host, say=messages.append)  # held to the popularity test alone, and says so
    assert upgraded.version is not None and registry.current() == upgraded.version != "v-unknown"
    assert any("v-unknown records no configuration" in m and "popularity test alone" in m for m in messages)
    assert any("against popularity (G-TopFreq)" in m for m in messages[-4:])


def test_a_promoted_version_reaches_a_running_server_without_failed_or_mixed_answers(tmp_path: Path) -> None:
    import threading
    import time

    import grpc
    from conftest import start_server, stop_server
    from endcap.release.validated_training import train
    from endcap.v1 import recommendation_pb2 as pb
    from endcap.v1 import recommendation_pb2_grpc as pb_grpc

    workspace = prepared_workspace(tmp_path, users=30, items=40, baskets=5)
    host = PluginHost(EndcapConfig())
    first = train(workspace, host, validate=False)
    second = train(workspace, host, promote=False, validate=False)
    server = start_server(workspace.root, tmp_path)
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Recommend(pb.RecommendRequest(user_id="u1", k=5), timeout=5)
                    similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=3), timeout=5)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                if len(reply.items) != 5 or len(similar.items) != 3:
                    failures.append(f"short answer: {len(reply.items)} items, {len(similar.items)} similar")
                seen.append(reply.model_version)
                seen.append(similar.model_version)

    client = threading.Thread(target=traffic)
    client.start()
    try:
        time.sleep(1.0)
        ModelRegistry(workspace.models).set_current(second.version)  # what `endcap promote` does
        deadline = time.monotonic() + 30
        while (not seen or seen[-1] != second.version) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        client.join()
        stop_server(server)
    assert not failures
    assert seen[0] == first.version and seen[-1] == second.version
    switch = seen.index(second.version)
    assert set(seen[:switch]) == {first.version} and set(seen[switch:]) == {second.version}
    assert '"model_switched"' in server.stderr_path.read_text()
