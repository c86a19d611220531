"""SimilarItems: products bought with, or like, one product, from the candidate source named by
``serving.similar_items_source``, with the caller's exclusions and the model's filters applied."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from endcap.config import ServingConfig
from endcap.errors import FailedPrecondition, NotFound
from endcap.serving.business_rules import BusinessRules
from endcap.serving.component_calls import ComponentCalls
from endcap.serving.model import ServingModel
from endcap.serving.requests import RequestValidator, require_id
from endcap.types import Query, ScoreArray


class SimilarItems:
    """Answers SimilarItems for one loaded model version. ``calls`` counts the filters dropped
    (share the pipeline's to count them together)."""

    def __init__(self, model: ServingModel, serving: ServingConfig, calls: ComponentCalls | None = None) -> None:
        self.model = model
        self.serving = serving
        self.requests = RequestValidator(serving)
        self.rules = BusinessRules(model.components.filters, calls or ComponentCalls())

    def answer(self, item_id: str, k: int, exclude_item_ids: Sequence[str] = ()) -> tuple[tuple[str, ...], ScoreArray]:
        """Up to ``k`` item ids, best first, and their scores. An item outside the model's
        catalogue is NOT_FOUND; a source without similar-item support is FAILED_PRECONDITION."""
        require_id("item_id", item_id)
        k = self.requests.k(k)
        index = int(self.model.item_indices([item_id])[0])
        if index < 0:
            raise NotFound(f"item {item_id!r} is not in the catalogue of model {self.model.version}")
        name = self.serving.similar_items_source
        generator = self.model.components.candidates.get(name)
        exclude = self.model.item_indices(list(exclude_item_ids))
        result = generator.similar(index, k + exclude.size) if generator is not None else None
        if result is None:
            raise FailedPrecondition(
                f"serving.similar_items_source is {name!r}, which is not a configured candidate generator "
                "with similar-item support; set it to 'als' or 'item2item' in endcap.yaml"
            )
        query = Query(user_id="", user_index=-1, k=k, exclude=np.unique(exclude[exclude >= 0]))
        keep = self.rules.keep(query, result.ids, {})
        ids, scores = result.ids[keep][:k], result.scores[keep][:k]
        return tuple(self.model.catalog.item_ids[ids].tolist()), scores
