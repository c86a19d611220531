"""Endcap's contracts for the promotions rule and the promotion feature."""

from __future__ import annotations

import endcap_promotions
from endcap.testing import FeatureProviderContract, FilterContract


class TestPromotions(FilterContract):
    type_name = "promotions"
    config = {"boost": 3.0}

    def make_plugin(self) -> object:
        return endcap_promotions


class TestPromotionFeatures(FeatureProviderContract):
    type_name = "promotion_features"

    def make_plugin(self) -> object:
        return endcap_promotions
