"""What a model version keeps of its validation, so the promotion gate can compare on the same holdout.

``endcap train`` scores the configuration on a holdout (each user's newest basket, trained on
everything before it) and writes, beside the model:

* ``validation.npz`` (an artifact, under the version's checksums): the evaluated user ids and each
  user's NDCG@10 for the pipeline and for the popularity baseline (G-TopFreq), same order;
* in the manifest: ``holdout_fingerprint`` (:func:`endcap.evaluation.holdout.holdout_fingerprint`) and
  ``configuration``, the resolved model configuration (plugins with their versions, serving,
  candidates, ranker, filters; no monitors, TLS or credentials), from which
  :func:`rescore_configuration` rebuilds that configuration on another version's holdout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from endcap.errors import FailedPrecondition

if TYPE_CHECKING:
    from endcap.config import EndcapConfig
    from endcap.model_versions import Manifest
    from endcap.plugin_host import PluginHost
    from endcap.workspace import Workspace

VALIDATION_FILE = "validation.npz"
CONFIGURATION_KEYS = ("plugins", "serving", "candidates", "ranker", "filters")
"""The parts of ``endcap.yaml`` that decide a model's answers."""


@dataclass(frozen=True)
class HoldoutScores:
    """Per-user NDCG@10 on one holdout, in ``user_ids`` order."""

    user_ids: np.ndarray
    pipeline: np.ndarray
    popularity: np.ndarray


def save_holdout_scores(directory: Path, scores: HoldoutScores) -> None:
    np.savez(
        directory / VALIDATION_FILE,
        user_ids=np.asarray(scores.user_ids, dtype=str),
        pipeline=np.asarray(scores.pipeline, dtype=np.float64),
        popularity=np.asarray(scores.popularity, dtype=np.float64),
    )


def load_holdout_scores(directory: Path) -> HoldoutScores | None:
    """The version's per-user validation values; ``None`` when it has none (trained without
    validation, or by an Endcap before per-user values were recorded)."""
    path = directory / VALIDATION_FILE
    if not path.exists():
        return None
    with np.load(path) as arrays:
        return HoldoutScores(arrays["user_ids"], arrays["pipeline"], arrays["popularity"])


def model_configuration(config: EndcapConfig, host: PluginHost) -> dict[str, Any]:
    """The configuration a model was trained with, as JSON values, with the loaded plugins' versions."""
    dumped = config.model_dump(mode="json")
    resolved = {key: dumped[key] for key in CONFIGURATION_KEYS}
    resolved["plugin_versions"] = {info.name: info.version for info in host.plugins}
    return resolved


def configuration_host(configuration: dict[str, Any], version: str) -> tuple[EndcapConfig, PluginHost]:
    """Rebuild the configuration recorded in model ``version``'s manifest (monitors off)."""
    from endcap.config import EndcapConfig
    from endcap.plugin_host import PluginHost

    if not configuration:
        raise FailedPrecondition(
            f"model {version} records no configuration (it was trained by an earlier Endcap), so it cannot be "
            "scored on another holdout; retrain it, or pass --force to promote without the comparison"
        )
    settings = {key: configuration[key] for key in CONFIGURATION_KEYS if key in configuration}
    config = EndcapConfig.model_validate({**settings, "monitors": {}, "source": f"model {version}"})
    return config, PluginHost(config)


def rescore_configuration(workspace: Workspace, candidate: Manifest, current: Manifest) -> np.ndarray:
    """Per-user NDCG@10 of ``current``'s configuration, trained and scored on ``candidate``'s holdout
    (rebuilt from the workspace's log), in the order of the candidate's ``validation.npz``.

    :raises FailedPrecondition: the log no longer gives the candidate's holdout (it changed since
        the candidate was trained), or ``current`` records no configuration.
    """
    from endcap.data.ingest import load_interactions
    from endcap.evaluation.evaluate import holdout_split, holdout_validation
    from endcap.evaluation.holdout import TargetSplit

    split = holdout_split(load_interactions(workspace))
    if split.fingerprint() != candidate.holdout_fingerprint:
        raise FailedPrecondition(
            f"the purchase log changed since model {candidate.version} was trained, so its validation holdout "
            f"cannot be rebuilt to score the current model {current.version} on; retrain ('endcap train') "
            "or pass --force"
        )
    config, host = configuration_host(current.configuration, current.version)
    split = TargetSplit("holdout-current", split.training, split.target, split.protocol, split.seed)
    scored = holdout_validation(workspace, config, host, split)
    return np.asarray(scored.pipeline, dtype=np.float64)
