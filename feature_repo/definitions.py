"""Feast definitions: entities ``user`` and ``product`` and Endcap's two feature views.

The parquet sources live in the workspace named by ``$ENDCAP_WORKSPACE`` (``feast apply``) or
passed to :func:`build` (``endcap features``). A user's statistics and user×product statistics
(as arrays) are one row of ``user_stats``, so serving reads a user's whole history with a single
online lookup. ``user_stats`` is fed by a push source too: ``RecordEvents`` pushes a user's
updated row the moment a purchase is recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from endcap.features import feast_env  # noqa: F401  (before Feast: keeps Endcap's metrics in memory)
from endcap.features.tables import PRODUCT_STATS_VIEW
from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Float64, Int64, String

TTL = timedelta(0)
"""No expiry: a row is a snapshot of the user's or product's whole history up to the log's newest
event, so its age on the machine's clock says nothing about it (Feast reads ``0`` as "never
expires", both online and in point-in-time joins)."""
USER_STATS = "user_stats"
PRODUCT_STATS = PRODUCT_STATS_VIEW


@dataclass(frozen=True)
class Definitions:
    user: Entity
    product: Entity
    user_stats: FeatureView
    product_stats: FeatureView

    def all(self) -> list[Entity | FeatureView]:
        return [self.user, self.product, *self.views()]

    def views(self) -> list[FeatureView]:
        return [self.user_stats, self.product_stats]


def _source(features_dir: Path, name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(features_dir / f"{name}.parquet"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
    )


def push_source_name(view: str) -> str:
    """The push source feeding ``view`` (``RecordEvents`` pushes a user's updated row through it)."""
    return f"{view}_push"


def _pushed(features_dir: Path, name: str) -> PushSource:
    """A push source for real-time updates, backed by the view's parquet table for
    materialization and point-in-time reads."""
    return PushSource(name=push_source_name(name), batch_source=_source(features_dir, name))


def build(workspace: Path) -> Definitions:
    """Feast objects whose sources are the feature tables under ``<workspace>/features``."""
    features_dir = workspace / "features"
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shopper")
    product = Entity(name="product", join_keys=["item_id"], value_type=ValueType.STRING, description="A product")
    return Definitions(
        user=user,
        product=product,
        user_stats=FeatureView(
            name=USER_STATS,
            entities=[user],
            ttl=TTL,
            schema=[
                Field(name="orders", dtype=Int64, description="Orders placed"),
                Field(name="avg_basket_size", dtype=Float32, description="Mean items per order"),
                Field(name="avg_days_between_orders", dtype=Float32, description="Mean gap between orders"),
                Field(name="distinct_items", dtype=Int64, description="Distinct products bought"),
                Field(name="last_order_day", dtype=Float64, description="Last order, in days since 1970 (UTC)"),
                Field(name="item_ids", dtype=Array(String), description="Products the user bought"),
                Field(name="times_bought", dtype=Array(Int64), description="Orders containing each product"),
                Field(
                    name="orders_since_last_bought",
                    dtype=Array(Int64),
                    description="Orders since each product was last bought (0 = in the last order)",
                ),
                Field(
                    name="orders_since_first_bought",
                    dtype=Array(Int64),
                    description="Orders since each product was first bought (0 = in the last order)",
                ),
                Field(
                    name="last_bought_day",
                    dtype=Array(Float64),
                    description="When each product was last bought, in days since 1970 (UTC)",
                ),
                Field(
                    name="first_bought_day",
                    dtype=Array(Float64),
                    description="When each product was first bought, in days since 1970 (UTC)",
                ),
            ],
            source=_pushed(features_dir, USER_STATS),
        ),
        product_stats=FeatureView(
            name=PRODUCT_STATS,
            entities=[product],
            ttl=TTL,
            schema=[
                Field(name="purchases", dtype=Int64, description="Order lines with the product"),
                Field(name="distinct_buyers", dtype=Int64, description="Users who bought it"),
                Field(name="reorder_rate", dtype=Float32, description="Share of purchases that were re-buys"),
            ],
            source=_source(features_dir, PRODUCT_STATS),
        ),
    )


# Module-level objects for `feast apply`, which collects them from this module's globals.
_definitions = build(Path(os.environ.get("ENDCAP_WORKSPACE", ".endcap")).resolve())
user = _definitions.user
product = _definitions.product
user_stats = _definitions.user_stats
product_stats = _definitions.product_stats
