"""``blocklist``: a business rule that never serves the listed products (recalls, delistings)."""

from __future__ import annotations

from typing import Any

import endcap
import numpy as np
import pandas as pd


class BlocklistFilterConfig(endcap.ComponentConfig):
    item_ids: list[str] = []


class BlocklistFilter(endcap.Filter):
    Config = BlocklistFilterConfig
    config: BlocklistFilterConfig

    def load(self, context: endcap.ModelContext) -> None:
        indices = pd.Index(context.catalog.item_ids).get_indexer(pd.Index(self.config.item_ids))
        self.blocked = np.sort(indices[indices >= 0]).astype(np.int32)

    def keep(self, query: endcap.Query, ids: np.ndarray) -> np.ndarray:
        return ~np.isin(ids, self.blocked, assume_unique=False)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(BlocklistFilter, type_name="blocklist")
