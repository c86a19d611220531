"""``endcap train``: validate the configuration on a holdout of the log, then fit the version.

The same configuration is first trained without each user's newest basket and scored on it,
beside the popularity baseline (see :func:`endcap.evaluation.evaluate.holdout_validation`); the
figures go in the manifest, the per-user values in ``validation.npz``
(:mod:`endcap.training.version_record`): what ``endcap promote`` compares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from endcap.data.training_data import build_training_data
from endcap.evaluation.evaluate import holdout_split, holdout_validation
from endcap.model_versions import Manifest
from endcap.plugin_host import PluginHost
from endcap.training.fit import fit_version, load_training_log
from endcap.training.version_record import HoldoutScores, Validation
from endcap.workspace import Workspace


def train(workspace: Workspace, host: PluginHost, promote: bool = True, validate: bool = True) -> Manifest:
    """Fit all components and commit a new model version; make it current when ``promote``.
    With ``validate`` the version records its validation on the holdout (module docstring).

    :raises FailedPrecondition: the online store lacks users of the log (run ``endcap features``).
    """
    purchases = load_training_log(workspace, host.config.feature_store)
    validation = validate_configuration(workspace, host, purchases) if validate else None
    data = build_training_data(purchases)
    del purchases  # the strings are not needed to fit: at scale they are gigabytes
    return fit_version(workspace, host, data, promote=promote, validation=validation)


def validate_configuration(workspace: Workspace, host: PluginHost, purchases: pd.DataFrame) -> Validation:
    """``host``'s configuration trained on the holdout split of ``purchases`` and scored on its target."""
    validated = holdout_validation(workspace, host.config, host, holdout_split(purchases))
    scores = HoldoutScores(np.asarray(validated.user_ids), validated.pipeline, validated.popularity)
    return Validation(validated.metrics, validated.fingerprint, scores)
