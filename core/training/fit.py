"""Fitting a model version: every configured component trained on the log, written as one version.

Validation is not done here: :mod:`endcap.release.validated_training` measures it and passes the
figures in (``endcap train`` runs that); this module only writes what it is given.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version as distribution_version
from pathlib import Path

import numpy as np
import pandas as pd
import structlog
from endcap.config import FeatureStoreConfig
from endcap.data.ingest import load_interactions
from endcap.data.training_data import build_training_data, coded_log
from endcap.feature_repo.definitions import USER_STATS
from endcap.features import repeat_purchases
from endcap.features.coverage import check_users_stored, missing_ids
from endcap.features.store import existing_store
from endcap.model_versions import ComponentManifest, Manifest, ModelRegistry, component_dir, save_catalog
from endcap.plugin_host import Components, PluginHost
from endcap.registry import kind_of
from endcap.training.ranking_examples import (
    HISTORY,
    HistoryFits,
    build_ranking_examples,
    component_key,
    train_component,
)
from endcap.training.version_record import Validation, model_configuration, save_holdout_scores
from endcap.types import FeatureMatrix, ModelContext, Query, Ranker, TrainingData
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.training")


def reference_scores(ranker: Ranker, data: TrainingData, directory: Path) -> np.ndarray | None:
    """The freshly trained ranker's scores on its own examples: the score distribution drift
    monitors compare live traffic with. ``None`` when the ranker cannot score them."""
    examples = data.ranking_examples
    assert examples is not None
    try:
        ranker.load(ModelContext(data.catalog, data.user_items, directory))
        features = FeatureMatrix(np.zeros(len(examples.labels), np.int32), examples.names, examples.values)
        return np.asarray(ranker.score(Query("", -1, 10), features), dtype=np.float32)
    except Exception as exc:
        log.warning(
            "reference_scores_unavailable", ranker=ranker.name, error=f"{type(exc).__name__}: {exc}", exc_info=exc
        )
        return None


def load_training_log(workspace: Workspace, feature_store: FeatureStoreConfig) -> pd.DataFrame:
    """The workspace's purchase log, once its online store (``feature_store``) is known to hold
    every user of it.

    :raises FailedPrecondition: the online store lacks users of the log (run ``endcap features``).
    """
    purchases = load_interactions(workspace)
    check_users_stored(
        lambda ids: missing_ids(existing_store(workspace, feature_store), USER_STATS, ids),
        purchases["user_id"].unique(),
        "model not written",
        "run 'endcap features' (it materializes the log the model is trained on), then 'endcap train'",
    )
    return purchases


def train(
    workspace: Workspace, host: PluginHost, promote: bool = True, feature_store: FeatureStoreConfig | None = None
) -> Manifest:
    """Fit all components on the workspace's log, without validation, and commit a new version
    (current when ``promote``): what an evaluation rebuilds on each holdout's training lines.
    ``feature_store`` is the workspace's store (default: the one ``host``'s configuration names)."""
    feature_store = feature_store or host.config.feature_store
    data = build_training_data(load_training_log(workspace, feature_store))
    return fit_version(workspace, host, data, promote, feature_store=feature_store)


def fit_version(
    workspace: Workspace,
    host: PluginHost,
    data: TrainingData,
    promote: bool = True,
    validation: Validation | None = None,
    feature_store: FeatureStoreConfig | None = None,
) -> Manifest:
    """Fit all components on ``data`` (:func:`build_training_data` of the log; the caller need
    not keep the log's strings) and commit a new model version; make it current when
    ``promote``. ``validation`` (figures, holdout fingerprint, per-user values) is written with it.

    The log's repeat share decides, under ``serving.exclude_purchased: auto``, whether answers
    leave out already-bought items (see :mod:`endcap.features.repeat_purchases`); the manifest
    records both. ``feature_store`` is the workspace's store (default: the one ``host``'s
    configuration names), read for the ranker's point-in-time examples."""
    setting = host.config.serving.exclude_purchased
    profile = repeat_purchases.measure(coded_log(data))
    excluded = repeat_purchases.exclude_purchased(setting, profile)
    log.info("repeat_purchases", summary=repeat_purchases.describe(setting, profile, excluded))
    ingest = json.loads(workspace.ingest_manifest.read_text()) if workspace.ingest_manifest.exists() else {}
    registry = ModelRegistry(workspace.models)
    staging = registry.staging_dir()
    try:
        built = host.build_components()
        with tempfile.TemporaryDirectory(prefix=HISTORY) as kept:
            history_fits = HistoryFits(Path(kept))
            if any(c.needs_ranking_examples for c in built.all()):
                examples = build_ranking_examples(
                    workspace,
                    host,
                    host.config,
                    data,
                    excluded,
                    feature_store or host.config.feature_store,
                    history_fits,
                )
                data = replace(data, ranking_examples=examples)
            save_catalog(staging, data.catalog, data.user_items)
            if validation is not None:
                save_holdout_scores(staging, validation.scores)
            components = fit_components(host, built, data, staging, history_fits)
        manifest = Manifest(
            version=registry.new_version_name(),
            trained_at=datetime.now(UTC).isoformat(),
            data_fingerprint=ingest.get("fingerprint", ""),
            data_source=ingest.get("source", str(workspace.interactions)),
            training_rows=len(data.interactions),
            users=data.catalog.n_users,
            items=data.catalog.n_items,
            components=components,
            endcap_version=distribution_version("endcap"),
            validation=validation.metrics if validation is not None else {},
            holdout_fingerprint=validation.fingerprint if validation is not None else "",
            configuration=model_configuration(host.config, host),
            repeat_share=round(profile.share, 5),
            exclude_purchased=excluded,
        )
        registry.commit(staging, manifest)
    except BaseException:
        registry.discard(staging)
        raise
    if promote:
        registry.set_current(manifest.version)
    return manifest


def fit_components(
    host: PluginHost,
    built: Components,
    data: TrainingData,
    staging: Path,
    history_fits: HistoryFits | None = None,
) -> dict[str, ComponentManifest]:
    """Train each component into its directory under ``staging`` through the training hook,
    each given its own fit on the history when ``history_fits`` has one
    (:attr:`TrainingData.earlier_fit`); the ranker's reference scores (:func:`reference_scores`)
    go to the components trained after it."""
    components: dict[str, ComponentManifest] = {}
    for component in built.all():
        kind = kind_of(type(component))
        earlier = history_fits.earlier_fit(component) if history_fits else None
        params = train_component(host, component, replace(data, earlier_fit=earlier), staging)
        if component is built.ranker and data.ranking_examples is not None:
            directory = component_dir(staging, kind, component.name)
            data = replace(data, reference_scores=reference_scores(component, data, directory))
        registered = host.registry.find(type(component))
        components[component_key(component)] = ComponentManifest(
            kind=kind,
            type=registered.type_name if registered else type(component).__qualname__,
            plugin=registered.plugin if registered else type(component).__module__,
            params=dict(params),
        )
    return components
