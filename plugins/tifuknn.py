"""``tifuknn``: TIFU-KNN candidates — time-decayed personal item frequency blended with the
user's nearest neighbours' vectors (Hu et al., "Modeling Personalized Item Frequency
Information for Next-basket Recommendation", SIGIR 2020).

A user's baskets are cut into groups of ``group_size`` from the newest backwards; baskets in a
group are averaged with weights ``within_decay ** age_in_group``, groups with
``group_decay ** group_age``. The score is ``alpha * own + (1 - alpha) * mean(neighbours)``,
neighbours by cosine similarity of those vectors. With ``tune`` the parameters are picked on
each user's newest training basket (held out), then the model is refitted on everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

import endcap
import numpy as np
import pandas as pd
import scipy.sparse as sp
from endcap.evaluation.metrics import ranking_metrics
from endcap.plugins._shared import BestFirstRows
from endcap.types import TrainingData
from pydantic import Field

KEEP_PER_USER = 1000
"""Scores kept per user: enough for any request (k <= 1000)."""


class TifuKnnCandidatesConfig(endcap.ComponentConfig):
    group_size: int = Field(7, ge=1)
    within_decay: float = Field(0.9, gt=0, le=1)
    group_decay: float = Field(0.7, gt=0, le=1)
    neighbours: int = Field(300, ge=1)
    alpha: float = Field(0.7, ge=0, le=1)
    tune: bool = True
    """Choose ``group_decay``, ``neighbours`` and ``alpha`` from the grids below on held-out baskets."""
    group_decay_grid: list[float] = [0.6, 0.8]
    neighbours_grid: list[int] = [300]
    alpha_grid: list[float] = [0.7, 0.8, 0.9]


def personal_vectors(frame: pd.DataFrame, shape: tuple[int, int], config: Any, group_decay: float) -> sp.csr_matrix:
    """Users × items time-decayed frequency vectors from (user_index, item_index, basket_index) lines."""
    users = frame["user_index"].to_numpy()
    baskets = frame["basket_index"].to_numpy().astype(np.int64)
    newest = np.zeros(shape[0], dtype=np.int64)
    np.maximum.at(newest, users, baskets)
    count = newest[users] + 1
    age = newest[users] - baskets  # 0 = newest basket
    group = age // config.group_size
    in_group = age % config.group_size
    group_len = np.minimum(config.group_size, count - group * config.group_size)
    r = config.within_decay
    normaliser = group_len.astype(np.float64) if r == 1.0 else (1 - r**group_len) / (1 - r)
    groups = np.ceil(count / config.group_size)
    weights = (r**in_group / normaliser) * (group_decay**group / groups)
    vectors = sp.csr_matrix((weights.astype(np.float32), (users, frame["item_index"].to_numpy())), shape=shape)
    vectors.sum_duplicates()
    return vectors


def nearest_neighbours(vectors: sp.csr_matrix, k: int, block: int = 2048) -> np.ndarray:
    """Indices of each user's ``k`` most cosine-similar other users (users × k, -1 padded)."""
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    unit = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ vectors
    n = vectors.shape[0]
    k = min(k, max(n - 1, 0))
    result = np.full((n, k), -1, dtype=np.int32)
    if k == 0:
        return result
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        similarity = (unit[rows] @ unit.T).toarray()
        similarity[np.arange(rows.size), rows] = -np.inf
        best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        result[rows] = best
    return result


def _averaging(neighbours: np.ndarray) -> sp.csr_matrix:
    """Users × users matrix whose product with the vectors is the mean of each user's neighbours."""
    n, k = neighbours.shape
    valid = neighbours >= 0
    return sp.csr_matrix(
        (np.full(int(valid.sum()), 1.0 / max(k, 1), dtype=np.float32), (np.nonzero(valid)[0], neighbours[valid])),
        shape=(n, n),
    )


def _blended_top(
    own: sp.csr_matrix,
    neighbour_mean: sp.csr_matrix,
    alpha: float,
    k: int,
    with_scores: bool = False,
    block: int = 1024,
) -> Any:
    """Top-k item indices of ``alpha * own + (1 - alpha) * neighbour_mean`` per user (users × k,
    -1 padded), computed in dense blocks; ``with_scores`` returns them as a sparse score matrix."""
    n, items = own.shape
    k = min(k, items)
    out = np.full((n, k), -1, dtype=np.int64)
    values = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        scores = alpha * own[rows].toarray() + (1 - alpha) * neighbour_mean[rows].toarray()
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        chosen = np.take_along_axis(best, order, axis=1)
        chosen_scores = np.take_along_axis(scores, chosen, axis=1)
        chosen[chosen_scores <= 0] = -1
        out[rows] = chosen
        values[rows] = chosen_scores
    if not with_scores:
        return out
    keep = out >= 0
    return sp.csr_matrix((values[keep], (np.nonzero(keep)[0], out[keep])), shape=(n, items))


class _Parameters(TypedDict):
    group_decay: float
    neighbours: int
    alpha: float


class TifuKnnCandidates(endcap.CandidateGenerator):
    Config = TifuKnnCandidatesConfig
    config: TifuKnnCandidatesConfig

    def _tune(self, data: TrainingData) -> dict[str, Any]:
        frame = data.interactions
        newest = frame.groupby("user_index")["basket_index"].transform("max")
        held_out = (frame["basket_index"] == newest) & (newest >= 1)
        fit_part, truth_part = frame[~held_out], frame[held_out]
        shape = data.user_items.shape
        truth = sp.csr_matrix(
            (np.ones(len(truth_part), np.float32), (truth_part["user_index"], truth_part["item_index"])), shape=shape
        )
        best: tuple[float, dict[str, Any]] = (-1.0, {})
        for group_decay in self.config.group_decay_grid:
            vectors = personal_vectors(fit_part, shape, self.config, group_decay)
            for k in self.config.neighbours_grid:
                neighbour_mean = _averaging(nearest_neighbours(vectors, k)) @ vectors
                for alpha in self.config.alpha_grid:
                    rankings = _blended_top(vectors, neighbour_mean, alpha, 10)
                    ndcg = ranking_metrics(rankings, truth, ks=(10,))["ndcg@10"]
                    if ndcg > best[0]:
                        best = (ndcg, {"group_decay": group_decay, "neighbours": k, "alpha": alpha})
        return {**best[1], "tuning_ndcg@10": round(best[0], 4)}

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        chosen: _Parameters = {
            "group_decay": self.config.group_decay,
            "neighbours": self.config.neighbours,
            "alpha": self.config.alpha,
        }
        tuning: dict[str, Any] = {}
        if self.config.tune:
            tuning = self._tune(data)
            chosen = {
                "group_decay": tuning["group_decay"],
                "neighbours": tuning["neighbours"],
                "alpha": tuning["alpha"],
            }
        vectors = personal_vectors(data.interactions, data.user_items.shape, self.config, chosen["group_decay"])
        neighbour_mean = _averaging(nearest_neighbours(vectors, chosen["neighbours"])) @ vectors
        best = _blended_top(vectors, neighbour_mean, chosen["alpha"], KEEP_PER_USER, with_scores=True)
        sp.save_npz(directory / "scores.npz", best, compressed=False)
        return {
            **self.config.model_dump(exclude={"group_decay_grid", "neighbours_grid", "alpha_grid"}),
            **tuning,
            **chosen,
        }

    def load(self, context: endcap.ModelContext) -> None:
        # load_npz is typed for any sparse container; fit saved a CSR matrix, which loads as one.
        self._ranked = BestFirstRows(cast(sp.csr_matrix, sp.load_npz(context.directory / "scores.npz")).tocsr())

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return self._ranked.top(query.user_index, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(TifuKnnCandidates, type_name="tifuknn")
