"""Point-in-time reads from Feast's offline store (``get_historical_features``), for training
examples: a user's row, or product features, as of a moment, never anything later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from endcap.errors import FailedPrecondition
from endcap.features.store import USER_FEATURES, existing_store
from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.config import FeatureStoreConfig


class HistoricalFeatures:
    """Point-in-time reads from the offline store (``get_historical_features``), for training."""

    def __init__(self, workspace: Workspace, feature_store: FeatureStoreConfig | None = None) -> None:
        self.store = existing_store(workspace, feature_store)
        self.workspace = workspace

    def require_snapshots(self, cutoffs: Sequence[pd.Timestamp]) -> None:
        """Refuse to read as of ``cutoffs`` unless the offline store holds a snapshot at each: a
        missing one would silently give older rows (the store was built for fewer label baskets)."""
        import pyarrow.parquet as pq

        table = pq.read_table(self.workspace.features / "user_stats.parquet", columns=["event_timestamp"])
        held = set(pd.DatetimeIndex(table.column(0).unique().to_pandas()).tz_convert("UTC"))
        missing = [cutoff for cutoff in cutoffs if pd.Timestamp(cutoff).tz_convert("UTC") not in held]
        if missing:
            raise FailedPrecondition(
                f"the offline feature store has no snapshot for {len(missing)} of the ranker's label days (first "
                f"{missing[0].date()}): it was built from another log, or for fewer label baskets than "
                "training.label_baskets asks; run 'endcap features' again"
            )

    def require_training_users(self, users: int, sample: np.ndarray | None) -> None:
        """Refuse to build examples for ``sample`` (the ``training.ranking_users`` sample's ids,
        ``None``: everyone) of ``users`` unless the training snapshots hold their rows:
        ``endcap features`` writes them for the sample its configuration named, and a missing
        row would silently read an older one."""
        import json

        from endcap.features.store import TRAINING_USERS_FILE, training_users_record

        marker = self.workspace.features / TRAINING_USERS_FILE
        if not marker.exists():  # written before samples were: every user's rows
            return
        written = json.loads(marker.read_text())
        wanted = training_users_record(users, sample)
        if written["users"] == users and written["digest"] in ("everyone", wanted["digest"]):
            return  # everyone's rows, or the same sample's
        raise FailedPrecondition(
            f"the offline feature store's training snapshots hold {written['sampled']:,} of "
            f"{written['users']:,} users' rows (training.ranking_users when 'endcap features' ran); "
            f"training now asks for {wanted['sampled']:,} of {users:,} (another sample or log): "
            "run 'endcap features' again"
        )

    def users(self, user_ids: Sequence[str], as_of: Sequence[pd.Timestamp]) -> list[dict[str, Any]]:
        """For each (user, time) pair, the newest snapshot at or before that time, in input order;
        feature values are ``None`` where no snapshot is old enough."""
        entities = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": pd.to_datetime(list(as_of), utc=True)})
        frame = self.store.get_historical_features(entity_df=entities, features=USER_FEATURES).to_df()
        frame = entities.merge(frame, on=["user_id", "event_timestamp"], how="left")
        names = [f.split(":", 1)[1] for f in USER_FEATURES]
        values = frame[names].to_numpy(dtype=object)
        values[pd.isna(values)] = None
        return [dict(zip(names, row, strict=True)) for row in values]

    def product_features(
        self, references: Sequence[str], item_ids: Sequence[str], cutoffs: Sequence[pd.Timestamp]
    ) -> dict[pd.Timestamp, pd.DataFrame]:
        """Product-keyed features (``"view:feature"``) as of each cutoff, for ``item_ids`` in that
        order, one column per feature named without the view (NaN when no value is old enough),
        read in one point-in-time join."""
        items = pd.Index(list(item_ids), dtype=object)
        entities = pd.DataFrame(
            {
                "item_id": np.tile(items.to_numpy(), len(cutoffs)),
                "event_timestamp": np.repeat(pd.DatetimeIndex(list(cutoffs)), len(items)),
            }
        )
        frame = self.store.get_historical_features(entity_df=entities, features=list(references)).to_df()
        frame = entities.merge(frame, on=["item_id", "event_timestamp"], how="left")
        values = frame[[reference.split(":", 1)[1] for reference in references]]
        return {
            cutoff: values.iloc[i * len(items) : (i + 1) * len(items)].reset_index(drop=True)
            for i, cutoff in enumerate(cutoffs)
        }
