"""The business-rule filters of a model (``filters:`` in ``endcap.yaml``) applied to candidates:
which stay (:meth:`BusinessRules.keep`) and how far each moves up (:meth:`BusinessRules.boost`),
every rule called in isolation (see :mod:`endcap.serving.component_calls`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from endcap.serving.component_calls import ComponentCalls
from endcap.types import EMPTY_INDEX, BoolArray, Filter, IndexArray, Query, ScoreArray


class BusinessRules:
    """One model's filters, called through ``calls`` (which counts and logs the dropped ones)."""

    def __init__(self, filters: Mapping[str, Filter], calls: ComponentCalls) -> None:
        self.filters = filters
        self.calls = calls

    def __bool__(self) -> bool:
        return bool(self.filters)

    def keep(
        self, query: Query, ids: IndexArray, errors: dict[str, str], purchased: IndexArray = EMPTY_INDEX
    ) -> BoolArray:
        """Which candidates stay: not excluded by the caller, not among ``purchased`` (sorted),
        and kept by every filter."""
        keep = ~np.isin(ids, query.exclude) if query.exclude.size else np.ones(ids.size, dtype=bool)
        if purchased.size and ids.size:
            at = np.minimum(np.searchsorted(purchased, ids), purchased.size - 1)
            keep &= purchased[at] != ids
        for name, rule in self.filters.items():

            def call(rule: Filter = rule) -> BoolArray:
                mask = np.asarray(rule.keep(query, ids), dtype=bool)
                if mask.shape != ids.shape:
                    raise ValueError(f"mask shape {mask.shape} differs from candidates {ids.shape}")
                return mask

            mask = self.calls.run(f"filter:{name}", rule, errors, call)
            if mask is not None:
                keep &= mask
        return keep

    def boost(self, query: Query, ids: IndexArray, scores: ScoreArray, errors: dict[str, str]) -> ScoreArray:
        """``scores`` plus every rule's boost of each candidate."""
        for name, rule in self.filters.items():

            def call(rule: Filter = rule) -> ScoreArray | None:
                amounts = rule.boost(query, ids)
                if amounts is None:
                    return None
                amounts = np.asarray(amounts, dtype=np.float32)
                if amounts.shape != ids.shape:
                    raise ValueError(f"boost shape {amounts.shape} differs from candidates {ids.shape}")
                return amounts

            amounts = self.calls.run(f"boost:{name}", rule, errors, call)
            if amounts is not None:
                scores = scores + amounts
        return scores
