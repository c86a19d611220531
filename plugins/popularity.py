"""``popularity``: the most bought products. Serves cold-start users and fills short answers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
from endcap.types import TrainingData
from pydantic import Field


class PopularityCandidatesConfig(endcap.ComponentConfig):
    recent_days: int | None = Field(None, ge=1)
    """Count only purchases in the last ``recent_days`` of the log (default: all of it)."""


class PopularityCandidates(endcap.CandidateGenerator):
    """Products ranked by number of purchases; score = share of all purchases."""

    Config = PopularityCandidatesConfig
    config: PopularityCandidatesConfig

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        frame = data.interactions
        if self.config.recent_days is not None:
            cutoff = frame["timestamp"].max() - np.timedelta64(self.config.recent_days, "D")
            frame = frame[frame["timestamp"] >= cutoff]
        counts = np.bincount(frame["item_index"].to_numpy(), minlength=data.catalog.n_items).astype(np.float32)
        order = np.argsort(-counts, kind="stable").astype(np.int32)
        scores = counts[order] / max(float(counts.sum()), 1.0)
        keep = scores > 0
        np.savez(directory / "popularity.npz", ids=order[keep], scores=scores[keep])
        return {"recent_days": self.config.recent_days, "items": int(keep.sum())}

    def load(self, context: endcap.ModelContext) -> None:
        with np.load(context.directory / "popularity.npz") as arrays:
            self.ids, self.scores = arrays["ids"], arrays["scores"]

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return endcap.Candidates(self.ids[:n], self.scores[:n])


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(PopularityCandidates, type_name="popularity")
