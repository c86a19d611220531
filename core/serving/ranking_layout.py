"""The ranking feature layout: the order of the feature matrix's columns, and the code that writes
them. Serving and training (:mod:`endcap.training.ranking_examples`) both build their matrices
here, so a ranker learns from exactly the layout it is served with.

Columns, in order: one per candidate source (its score scaled to (0, 1], 0 where it did not
propose the item), then each configured feature provider's columns (see
:class:`endcap.types.FeatureProvider`), in the order of ``features:`` in ``endcap.yaml``. The
built-in providers give the user's statistics, the product's and the user × product ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from endcap.serving.component_calls import ComponentCalls
from endcap.types import FeatureMatrix, FeatureProvider, IndexArray, Query, UserBlock, UserFeatures, read_only

NO_PRODUCTS = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class ProviderBlock:
    """One provider's place in the layout and the product data it is handed."""

    name: str
    provider: FeatureProvider
    columns: slice
    products: npt.NDArray[np.float32]


def feature_names(source_names: Sequence[str], providers: Mapping[str, FeatureProvider]) -> tuple[str, ...]:
    """Every column's name, for sources ``source_names`` and ``providers``."""
    names = tuple(f"source.{name}" for name in source_names)
    for provider in providers.values():
        names += tuple(provider.names())
    return names


class RankingLayout:
    """The feature matrix of one model's candidates. ``products`` holds, per provider name, the
    ``n_items × len(product_references())`` matrix that provider is handed (see
    :class:`endcap.serving.model.ServingModel`)."""

    def __init__(
        self,
        source_names: Sequence[str],
        providers: Mapping[str, FeatureProvider],
        products: Mapping[str, npt.NDArray[np.float32]],
    ) -> None:
        self.names = feature_names(source_names, providers)
        duplicated = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature columns {duplicated} are written by more than one feature provider")
        self.sources = len(source_names)
        blocks, start = [], self.sources
        for name, provider in providers.items():
            stop = start + len(provider.names())
            blocks.append(ProviderBlock(name, provider, slice(start, stop), products.get(name, NO_PRODUCTS)))
            start = stop
        self.blocks = tuple(blocks)

    def matrix(
        self,
        query: Query,
        ids: IndexArray,
        source_scores: npt.NDArray[np.float32],
        user: UserFeatures,
        calls: ComponentCalls,
        errors: dict[str, str],
    ) -> FeatureMatrix:
        """The feature matrix of candidates ``ids``, written block by block into one array;
        ``source_scores`` is their ``candidates × sources`` matrix. A provider that fails (or
        returns a block of the wrong shape) leaves its columns at zero, recorded in ``errors``."""
        values = np.empty((ids.size, len(self.names)), dtype=np.float32)
        values[:, : self.sources] = source_scores
        ids = ids.copy()
        ids.flags.writeable = False
        for block in self.blocks:
            key = f"features:{block.name}"
            compute = partial(block.provider.compute, query, user, ids, block.products)
            computed = calls.run(key, block.provider, errors, compute)
            width = block.columns.stop - block.columns.start
            if computed is not None and np.shape(computed) != (ids.size, width):
                calls.drop(key, errors, f"returned shape {np.shape(computed)}, expected {(ids.size, width)}")
                computed = None
            values[:, block.columns] = 0.0 if computed is None else computed
        values.flags.writeable = False
        return FeatureMatrix(ids=ids, names=self.names, values=values)

    def block_matrix(
        self, block: UserBlock, ids: IndexArray, offsets: npt.NDArray[np.int64], source_scores: npt.NDArray[np.float32]
    ) -> FeatureMatrix:
        """:meth:`matrix` for every row of ``block`` at once (row ``j``'s candidates are
        ``ids[offsets[j]:offsets[j + 1]]``), each provider called once through
        :meth:`FeatureProvider.compute_block`. A provider that fails raises: the batch engine
        then answers the block's users one at a time, where a failure stays with its request."""
        values = np.empty((ids.size, len(self.names)), dtype=np.float32)
        values[:, : self.sources] = source_scores
        ids = read_only(ids.copy())
        for block_part in self.blocks:
            computed = block_part.provider.compute_block(block, ids, offsets, block_part.products)
            width = block_part.columns.stop - block_part.columns.start
            if np.shape(computed) != (ids.size, width):
                raise ValueError(
                    f"features:{block_part.name}.compute_block returned shape {np.shape(computed)}, "
                    f"expected {(ids.size, width)}"
                )
            values[:, block_part.columns] = computed
        return FeatureMatrix(ids=ids, names=self.names, values=read_only(values))
