"""A model version loaded for serving: catalogue, components with their state, product features.

Everything a request needs that does not change per request is built here once, so a reload
swaps one object.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import structlog
from endcap.errors import FailedPrecondition
from endcap.features.tables import USER_CLOCK_COLUMNS, USER_PRODUCT_COLUMNS, USER_STATS_COLUMNS
from endcap.model_versions import CorruptArtifact, Manifest, ModelRegistry, component_dir, load_catalog, verify_artifact
from endcap.plugin_host import Components, PluginHost
from endcap.registry import kind_of
from endcap.types import Catalog, Component, IndexArray, ModelContext, Monitor, UserFeatures, read_only
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.model")

ProductReader = Callable[[Sequence[str]], pd.DataFrame]
"""``references → frame``: product-keyed Feast features for every catalogue item, in catalogue
order, one column per reference (named by its feature); the online store's when serving, a
point-in-time read when building training examples."""


@dataclass(frozen=True)
class ServingModel:
    manifest: Manifest
    catalog: Catalog
    components: Components
    user_index: dict[str, int]
    item_lookup: dict[str, int]
    provider_products: Mapping[str, np.ndarray]
    """Per feature provider, its ``n_items × len(product_references())`` float32 matrix in C order
    (a request takes rows; NaN where the store lacks a value), read when the model loads."""
    user_items: sp.csr_matrix | None = None
    """The users × items purchase counts the model was trained on."""

    @property
    def version(self) -> str:
        return self.manifest.version

    def item_indices(self, item_ids: Any) -> IndexArray:
        """Catalogue indices of ``item_ids``; -1 for ids the model does not know."""
        return np.fromiter(map(self.item_lookup.get, item_ids, repeat(-1)), dtype=np.int32, count=len(item_ids))

    def user_features(self, raw: dict[str, Any]) -> UserFeatures:
        """Turn one feature-store row (see :meth:`OnlineFeatures.user`) into :class:`UserFeatures`,
        read-only throughout: the server shares it between requests (see :mod:`endcap.serving.user_memo`)."""
        if raw.get("orders") is None:
            return UserFeatures(stats=MappingProxyType({}))
        stats = {name: float(raw.get(name) or 0.0) for name in USER_STATS_COLUMNS}
        stats.update({name: _float_or_nan(raw.get(name)) for name in USER_CLOCK_COLUMNS})
        ids = self.item_indices(_sequence(raw.get("item_ids")))
        order = np.argsort(ids, kind="stable")
        order = order[ids[order] >= 0]  # sorted, products the model does not know left out
        item_stats = {name: read_only(_item_array(raw.get(name), ids.size)[order]) for name in USER_PRODUCT_COLUMNS}
        return UserFeatures(
            stats=MappingProxyType(stats), items=read_only(ids[order]), item_stats=MappingProxyType(item_stats)
        )

    def history_features(self, user_index: int) -> UserFeatures:
        """What the model itself knows of a user it was trained on: the items of their row in the
        training matrix and how often each was bought; no statistics, so :attr:`UserFeatures.known`
        stays false. For a user whose online row is missing."""
        if self.user_items is None or not 0 <= user_index < self.user_items.shape[0]:
            return UserFeatures(stats=MappingProxyType({}))
        start, end = self.user_items.indptr[user_index], self.user_items.indptr[user_index + 1]
        items = self.user_items.indices[start:end].astype(np.int32)
        order = np.argsort(items, kind="stable")
        counts = np.asarray(self.user_items.data[start:end], dtype=np.float32)[order]
        unknown = read_only(np.full_like(counts, np.nan))  # no orders are known: recency and cadence unknown
        item_stats = {name: unknown for name in USER_PRODUCT_COLUMNS}
        item_stats["times_bought"] = read_only(counts)
        item_stats["orders_since_last_bought"] = read_only(np.zeros_like(counts))
        return UserFeatures(
            stats=MappingProxyType({}), items=read_only(items[order]), item_stats=MappingProxyType(item_stats)
        )


def _float_or_nan(value: Any) -> float:
    """A day or count that may be unknown: ``None`` or negative (a row an earlier Endcap wrote)."""
    return math.nan if value is None or value < 0 else float(value)


def _item_array(value: Any, size: int) -> np.ndarray:
    """One of the row's per-item arrays as float32; NaN throughout when the row lacks it (a store
    written before the array existed: the features that read it are then unknown, not zero)."""
    values = _sequence(value)
    if len(values) == 0 and size:
        return np.full(size, np.nan, dtype=np.float32)
    return np.asarray(values, dtype=np.float32)


def _sequence(value: Any) -> Any:
    """Feature-store arrays arrive as lists, numpy arrays or ``None``."""
    return [] if value is None else value


def load_components(
    components: Iterable[Component],
    directory: Path,
    catalog: Catalog,
    user_items: sp.csr_matrix,
    product_features: ProductReader | None = None,
    workspace: Path | None = None,
) -> None:
    """Give each component the state ``fit`` saved under ``directory`` (a model version)."""
    for component in components:
        kind = kind_of(type(component))
        context = ModelContext(
            catalog, user_items, component_dir(directory, kind, component.name), product_features, workspace
        )
        try:
            component.load(context)
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"{kind} {component.name!r} has no trained state in {directory} ({exc.filename}); "
                "run 'endcap train' after changing endcap.yaml"
            ) from exc


def provider_products(components: Components, read: ProductReader | None) -> dict[str, np.ndarray]:
    """Each feature provider's product matrix (see :attr:`ServingModel.provider_products`): one
    read per provider that names product references; all NaN when no store is at hand."""
    matrices = {}
    for name, provider in components.features.items():
        references = list(provider.product_references())
        if not references:
            continue
        if read is None:
            raise FailedPrecondition(
                f"feature provider {name!r} needs product features but no feature store is at hand"
            )
        frame = read(references)
        columns = [reference.split(":", 1)[1] for reference in references]
        values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
        matrices[name] = read_only(np.ascontiguousarray(values))
    return matrices


def assemble(
    manifest: Manifest,
    catalog: Catalog,
    components: Components,
    products: ProductReader | None,
    user_items: sp.csr_matrix | None = None,
) -> ServingModel:
    """A serving model from loaded components; ``products`` reads the feature providers' product
    data (rows in catalogue order)."""
    return ServingModel(
        manifest=manifest,
        catalog=catalog,
        components=components,
        user_index={user_id: i for i, user_id in enumerate(catalog.user_ids.tolist())},
        item_lookup={item_id: i for i, item_id in enumerate(catalog.item_ids.tolist())},
        provider_products=provider_products(components, products),
        user_items=user_items,
    )


def check_feature_layout(manifest: Manifest, components: Components) -> None:
    """Refuse a model version trained with feature providers the configuration no longer has:
    its ranker would score columns that are not served."""
    trained = manifest.configuration.get("features")
    if not isinstance(trained, dict):
        return  # a version from before feature providers: the built-in layout
    missing = sorted(set(trained) - set(components.features))
    if missing:
        raise FailedPrecondition(
            f"model version {manifest.version} was trained with feature providers {missing} that the "
            "configuration does not have; add them under 'features:' in endcap.yaml (and install their "
            "plugins), or retrain"
        )


def load_serving_model(
    workspace: Workspace,
    host: PluginHost,
    online: Any,
    version: str | None = None,
    monitors: Mapping[str, Monitor] | None = None,
    registry: ModelRegistry | None = None,
) -> ServingModel:
    """Load ``version`` (default: current) with every configured component and the product matrix.

    ``monitors`` keeps running monitors (a reload): they are given the new version's state
    instead of being built anew, so their counters and windows carry over. ``registry`` loads
    from another copy of the registry than the workspace's (a Spark worker's local copy)."""
    started = time.perf_counter()
    registry = registry or ModelRegistry(workspace.models)
    directory = registry.path(version)
    manifest = registry.manifest(directory.name)
    verify_artifact(directory, manifest)
    catalog, user_items = load_catalog(directory)
    components = host.build_components()
    if monitors is not None:
        components = replace(components, monitors=dict(monitors))
    check_feature_layout(manifest, components)
    item_ids = list(catalog.item_ids)

    def read_products(references: Sequence[str]) -> pd.DataFrame:
        frame: pd.DataFrame = online.product_features(references, item_ids)
        return frame

    load_components(components.all(), directory, catalog, user_items, read_products, workspace.root)
    model = assemble(manifest, catalog, components, read_products, user_items)
    for name, matrix in model.provider_products.items():
        absent = int(np.isnan(matrix).all(axis=1).sum()) if matrix.shape[1] else 0
        if absent:  # served as the provider treats a missing value: said, not silent
            log.warning(
                "products_missing_from_store",
                version=manifest.version,
                provider=name,
                missing=absent,
                items=catalog.n_items,
                fix="run 'endcap features' on the log the model was trained on",
            )
    log.info(
        "model_loaded",
        version=manifest.version,
        users=catalog.n_users,
        items=catalog.n_items,
        seconds=round(time.perf_counter() - started, 3),
    )
    return model


def load_newest_sound_model(workspace: Workspace, host: PluginHost, online: Any) -> ServingModel:
    """The current version; when its artifact is corrupt, the newest earlier version that is sound
    (logged as an error), so a damaged file never takes the service down."""
    registry = ModelRegistry(workspace.models)
    current = registry.current()
    try:
        return load_serving_model(workspace, host, online, current)
    except CorruptArtifact as refusal:
        log.error("model_refused", version=current, reason=str(refusal))
        for version in reversed(registry.versions()):
            if version == current:
                continue
            try:
                model = load_serving_model(workspace, host, online, version)
            except (CorruptArtifact, FailedPrecondition) as other:
                log.error("model_refused", version=version, reason=str(other))
                continue
            log.error("serving_previous_version", version=version, refused=current)
            return model
        raise CorruptArtifact(f"{refusal}; no earlier version is sound either") from refusal
