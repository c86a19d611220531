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
    CandidateBlock,
    CandidateGenerator,
    Candidates,
    Catalog,
    Component,
    ComponentConfig,
    EarlierFit,
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
    UserBlock,
    UserFeatures,
)

__all__ = [
    "CandidateBlock",
    "CandidateGenerator",
    "Candidates",
    "Catalog",
    "Component",
    "ComponentConfig",
    "EarlierFit",
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
    "UserBlock",
    "UserFeatures",
    "hookimpl",
]
