"""A model version loaded for serving: catalogue, components with their state, product features.

Everything a request needs that does not change per request is built here once, so a reload
swaps one object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import structlog
from endcap.errors import FailedPrecondition
from endcap.feature_tables import PRODUCT_STATS_COLUMNS
from endcap.models import Manifest, ModelRegistry, component_dir, load_catalog
from endcap.plugin_host import Components, PluginHost
from endcap.registry import kind_of
from endcap.types import Catalog, IndexArray, ModelContext, UserFeatures
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.model")

PRODUCT_FEATURE_NAMES = tuple(f"product.{c}" for c in PRODUCT_STATS_COLUMNS)


@dataclass(frozen=True)
class ServingModel:
    manifest: Manifest
    catalog: Catalog
    components: Components
    user_index: dict[str, int]
    item_lookup: pd.Index
    product_features: np.ndarray
    """``n_items × len(PRODUCT_FEATURE_NAMES)`` float32, read from the online store at load."""

    @property
    def version(self) -> str:
        return self.manifest.version

    def item_indices(self, item_ids: Any) -> IndexArray:
        """Catalogue indices of ``item_ids``; -1 for ids the model does not know."""
        if len(item_ids) == 0:
            return np.empty(0, dtype=np.int32)
        return self.item_lookup.get_indexer(pd.Index(item_ids, dtype=object)).astype(np.int32)

    def user_features(self, raw: dict[str, Any]) -> UserFeatures:
        """Turn one online-store row (see :meth:`OnlineFeatures.user`) into :class:`UserFeatures`."""
        if raw.get("orders") is None:
            return UserFeatures(stats={})
        stats = {
            name: float(raw[name] or 0.0)
            for name in ("orders", "avg_basket_size", "avg_days_between_orders", "distinct_items")
        }
        ids = self.item_indices(raw.get("item_ids") or [])
        known = ids >= 0
        order = np.argsort(ids[known], kind="stable")
        item_stats = {
            name: np.asarray(raw.get(name) or [], dtype=np.float32)[known][order]
            for name in ("times_bought", "orders_since_last_bought")
        }
        return UserFeatures(stats=stats, items=ids[known][order], item_stats=item_stats)


def load_serving_model(workspace: Workspace, host: PluginHost, online: Any, version: str | None = None) -> ServingModel:
    """Load ``version`` (default: current) with every configured component and the product matrix."""
    started = time.perf_counter()
    registry = ModelRegistry(workspace.models)
    directory = registry.path(version)
    manifest = registry.manifest(directory.name)
    catalog, user_items = load_catalog(directory)
    components = host.build_components()
    for component in components.all():
        kind = kind_of(type(component))
        context = ModelContext(catalog, user_items, component_dir(directory, kind, component.name))
        try:
            component.load(context)
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"{kind} {component.name!r} has no trained state in model {manifest.version} ({exc.filename}); "
                "run 'endcap train' after changing endcap.yaml"
            ) from exc
    product_frame = online.products(list(catalog.item_ids))
    model = ServingModel(
        manifest=manifest,
        catalog=catalog,
        components=components,
        user_index={user_id: i for i, user_id in enumerate(catalog.user_ids.tolist())},
        item_lookup=pd.Index(catalog.item_ids.astype(object)),
        product_features=np.nan_to_num(product_frame.to_numpy(np.float32)),
    )
    log.info(
        "model_loaded",
        version=manifest.version,
        users=catalog.n_users,
        items=catalog.n_items,
        seconds=round(time.perf_counter() - started, 3),
    )
    return model
