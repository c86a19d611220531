"""What ``endcap train`` writes beside a version's components so its validation can be compared later.

* ``validation.npz`` (an artifact, under the version's checksums): the evaluated user ids and each
  user's NDCG@10 for the pipeline and for the popularity baseline (G-TopFreq), same order;
* in the manifest: the validation figures, ``holdout_fingerprint`` and ``configuration``, the
  resolved model configuration (plugins with their versions, serving, candidates, ranker,
  filters; no monitors, TLS or credentials).

Training only writes what it is given; measuring it is :mod:`endcap.release.validated_training`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from endcap.config import EndcapConfig
    from endcap.plugin_host import PluginHost

VALIDATION_FILE = "validation.npz"
CONFIGURATION_KEYS = ("plugins", "serving", "training", "candidates", "ranker", "filters", "features")
"""The parts of ``endcap.yaml`` that decide a model's answers."""


@dataclass(frozen=True)
class HoldoutScores:
    """Per-user NDCG@10 on one holdout, in ``user_ids`` order."""

    user_ids: np.ndarray
    pipeline: np.ndarray
    popularity: np.ndarray


@dataclass(frozen=True)
class Validation:
    """A configuration's validation, as a new version records it."""

    metrics: dict[str, float]
    """The manifest's ``validation`` figures."""
    fingerprint: str
    """The holdout's fingerprint (:func:`endcap.evaluation.holdout.holdout_fingerprint`)."""
    scores: HoldoutScores
    """The per-user values written to ``validation.npz``."""


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
