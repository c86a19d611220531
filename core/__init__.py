"""Endcap: a plugin-based product-purchase recommendation service.

Plugin authors need only this module::

    import endcap

    @endcap.hookimpl
    def endcap_register_components(registry):
        registry.add(MyCandidates, type_name="mine")
"""

from __future__ import annotations

from endcap.markers import hookimpl
from endcap.types import (
    CandidateGenerator,
    Candidates,
    Catalog,
    Component,
    ComponentConfig,
    Event,
    FeatureMatrix,
    FeatureProvider,
    Filter,
    ModelContext,
    Monitor,
    Query,
    Ranker,
    RankingExamples,
    RequestRecord,
    TrainingData,
    UserFeatures,
)

__all__ = [
    "CandidateGenerator",
    "Candidates",
    "Catalog",
    "Component",
    "ComponentConfig",
    "Event",
    "FeatureMatrix",
    "FeatureProvider",
    "Filter",
    "ModelContext",
    "Monitor",
    "Query",
    "Ranker",
    "RankingExamples",
    "RequestRecord",
    "TrainingData",
    "UserFeatures",
    "hookimpl",
]
