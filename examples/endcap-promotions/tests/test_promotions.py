"""Endcap's filter contract for the promotions rule."""

from __future__ import annotations

import endcap_promotions
from endcap.testing import FilterContract


class TestPromotions(FilterContract):
    type_name = "promotions"
    config = {"boost": 3.0}

    def make_plugin(self) -> object:
        return endcap_promotions
