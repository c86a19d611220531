"""What a model version keeps of its validation, so the promotion gate can compare on the same holdout.

``endcap train`` scores the configuration on a holdout (each user's newest basket, trained on
everything before it; see :mod:`endcap.release.validated_training`) and writes, beside the model,
what :mod:`endcap.training.version_record` describes: ``validation.npz`` with per-user values, and
in the manifest ``holdout_fingerprint`` and ``configuration``, from which
:func:`rescore_configuration` rebuilds that configuration on another version's holdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from endcap.errors import FailedPrecondition
from endcap.training.version_record import (
    CONFIGURATION_KEYS,
    VALIDATION_FILE,
    HoldoutScores,
    load_holdout_scores,
    model_configuration,
    save_holdout_scores,
)

if TYPE_CHECKING:
    from endcap.config import EndcapConfig
    from endcap.model_versions import Manifest
    from endcap.plugin_host import PluginHost
    from endcap.workspace import Workspace

__all__ = [
    "CONFIGURATION_KEYS",
    "VALIDATION_FILE",
    "HoldoutScores",
    "configuration_host",
    "load_holdout_scores",
    "model_configuration",
    "rescore_configuration",
    "save_holdout_scores",
]


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
