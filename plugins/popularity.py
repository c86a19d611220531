"""``popularity``: the most bought products. Serves cold-start users and fills short answers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
from endcap.types import TrainingData, run_offsets
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

    def generate_block(self, block: endcap.UserBlock, n: np.ndarray) -> endcap.CandidateBlock:
        """The same head of the list for every row, cut to its ``n``."""
        lengths = np.clip(n.astype(np.int64), 0, self.ids.size)
        offsets = run_offsets(lengths)
        positions = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return endcap.CandidateBlock(self.ids[positions], self.scores[positions], offsets)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(PopularityCandidates, type_name="popularity")
