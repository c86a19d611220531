"""``endcap train``: build the training data, fit every configured component, write a version."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version as distribution_version

import numpy as np
import pandas as pd
import scipy.sparse as sp
from endcap.feature_tables import add_basket_index
from endcap.ingest import load_interactions
from endcap.models import ComponentManifest, Manifest, ModelRegistry, component_dir, save_catalog
from endcap.plugin_host import PluginHost
from endcap.registry import kind_of
from endcap.types import Catalog, TrainingData
from endcap.workspace import Workspace


def build_training_data(log: pd.DataFrame) -> TrainingData:
    """Map string ids to dense indices and build the users × items count matrix."""
    log = add_basket_index(log) if "basket_index" not in log.columns else log
    user_ids = np.sort(log["user_id"].unique().astype(str))
    item_ids = np.sort(log["item_id"].unique().astype(str))
    catalog = Catalog(user_ids=user_ids, item_ids=item_ids)
    user_index = pd.Index(user_ids).get_indexer(log["user_id"]).astype(np.int32)
    item_index = pd.Index(item_ids).get_indexer(log["item_id"]).astype(np.int32)
    interactions = pd.DataFrame(
        {
            "user_index": user_index,
            "item_index": item_index,
            "basket_index": log["basket_index"].to_numpy(np.int32),
            "timestamp": log["timestamp"].to_numpy(),
            "quantity": log["quantity"].to_numpy(np.int32),
        }
    ).sort_values(["user_index", "timestamp"], kind="stable", ignore_index=True)
    user_items = sp.csr_matrix(
        (np.ones(len(interactions), dtype=np.float32), (interactions["user_index"], interactions["item_index"])),
        shape=(catalog.n_users, catalog.n_items),
    )
    user_items.sum_duplicates()
    return TrainingData(catalog=catalog, interactions=interactions, user_items=user_items)


def train(workspace: Workspace, host: PluginHost, promote: bool = True) -> Manifest:
    """Fit all components and commit a new model version; make it current when ``promote``."""
    log = load_interactions(workspace)
    data = build_training_data(log)
    ingest = json.loads(workspace.ingest_manifest.read_text()) if workspace.ingest_manifest.exists() else {}
    registry = ModelRegistry(workspace.models)
    staging = registry.staging_dir()
    try:
        save_catalog(staging, data.catalog, data.user_items)
        components: dict[str, ComponentManifest] = {}
        for component in host.build_components().all():
            kind = kind_of(type(component))
            directory = component_dir(staging, kind, component.name)
            directory.mkdir(parents=True)
            params = host.manager.hook.endcap_train_component(component=component, data=data, directory=directory)
            registered = host.registry.find(type(component))
            components[f"{kind}/{component.name}"] = ComponentManifest(
                kind=kind,
                type=registered.type_name if registered else type(component).__qualname__,
                plugin=registered.plugin if registered else type(component).__module__,
                params=dict(params or {}),
            )
        manifest = Manifest(
            version=registry.new_version_name(),
            trained_at=datetime.now(UTC).isoformat(),
            data_fingerprint=ingest.get("fingerprint", ""),
            data_source=ingest.get("source", str(workspace.interactions)),
            training_rows=len(log),
            users=data.catalog.n_users,
            items=data.catalog.n_items,
            components=components,
            endcap_version=distribution_version("endcap"),
        )
        registry.commit(staging, manifest)
    except BaseException:
        registry.discard(staging)
        raise
    if promote:
        registry.set_current(manifest.version)
    return manifest
