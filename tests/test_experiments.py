"""A/B variants: stable assignment, forced arms, per-arm rankers and sources, metrics by variant."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import prepared_workspace
from endcap.config import ComponentBlock, EndcapConfig, ExperimentConfig, VariantConfig, load_config
from endcap.errors import ConfigError, InvalidArgument
from endcap.features.store import OnlineFeatures
from endcap.plugin_host import PluginHost
from endcap.release.validated_training import train
from endcap.serving.experiments import assign
from endcap.serving.service import RecommendationService
from prometheus_client.parser import text_string_to_metric_families

EXPERIMENT = ExperimentConfig(
    name="ranker-test",
    variants={
        "control": VariantConfig(share=0.5),
        "simple": VariantConfig(
            share=0.5, ranker=ComponentBlock(type="linear"), candidates=["popularity", "repurchase"]
        ),
    },
)


def test_assignment_is_stable_and_follows_the_shares() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    first = [assign(EXPERIMENT, u) for u in users]
    assert first == [assign(EXPERIMENT, u) for u in users]
    shares = Counter(first)
    assert abs(shares["control"] / len(users) - 0.5) < 0.02
    other = ExperimentConfig(name="another-test", variants=EXPERIMENT.variants)
    assert [assign(other, u) for u in users[:200]] != first[:200], "experiments are independent"


def test_shares_must_add_up(tmp_path: Path) -> None:
    (tmp_path / "endcap.yaml").write_text(
        "experiment:\n  name: x\n  variants:\n    a: {share: 0.5}\n    b: {share: 0.3}\n"
    )
    with pytest.raises(
        ConfigError, match=r"experiment: Value error, variant shares must add up to 1; they add up to 0\.8"
    ):
        load_config(tmp_path)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> RecommendationService:
    workspace = prepared_workspace(tmp_path_factory.mktemp("ab"), users=40, items=60, baskets=5)
    config = EndcapConfig(experiment=EXPERIMENT)
    host = PluginHost(config)
    manifest = train(workspace, host, validate=False)
    assert "ranker/ranker@simple" in manifest.components  # the arm's ranker is trained with the model
    return RecommendationService(workspace, config, host, OnlineFeatures(workspace))


def test_users_are_served_by_their_variant(service: RecommendationService) -> None:
    answers = {u: service.recommend("r", u, 10, [], {}, "") for u in (f"u{i}" for i in range(40))}
    variants = Counter(a.variant for a in answers.values())
    assert set(variants) == {"control", "simple"}
    assert all(service.recommend("r", u, 10, [], {}, "").variant == a.variant for u, a in answers.items())
    for answer in answers.values():
        used = {source for sources in answer.sources for source in sources}
        if answer.variant == "simple":
            assert used <= {"popularity", "repurchase"}
        assert len(answer.item_ids) == 10


def test_a_request_can_force_a_variant(service: RecommendationService) -> None:
    assert service.recommend("r", "u1", 5, [], {}, "simple").variant == "simple"
    assert service.recommend("r", "u1", 5, [], {}, "control").variant == "control"
    with pytest.raises(
        InvalidArgument, match="variant 'nope' is not in experiment 'ranker-test'; variants: control, simple"
    ):
        service.recommend("r", "u1", 5, [], {}, "nope")


def _rank_counts(service: RecommendationService) -> dict[str, float]:
    from prometheus_client import generate_latest

    assert service.monitor_feed.flush()
    samples = [s for f in text_string_to_metric_families(generate_latest(service.metrics).decode()) for s in f.samples]
    return {
        s.labels["variant"]: s.value
        for s in samples
        if s.name == "endcap_stage_duration_seconds_count" and s.labels.get("stage") == "rank"
    }


def test_metrics_are_split_by_variant(service: RecommendationService) -> None:
    before = _rank_counts(service)
    service.recommend("r", "u2", 5, [], {}, "simple")
    service.recommend("r", "u2", 5, [], {}, "simple")
    service.recommend("r", "u2", 5, [], {}, "control")
    after = _rank_counts(service)
    assert after["simple"] - before.get("simple", 0) == 2
    assert after["control"] - before.get("control", 0) == 1
