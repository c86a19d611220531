"""``tifuknn``: TIFU-KNN candidates — time-decayed personal item frequency blended with the
user's nearest neighbours' vectors (Hu et al., "Modeling Personalized Item Frequency
Information for Next-basket Recommendation", SIGIR 2020).

A user's baskets are cut into groups of ``group_size`` from the newest backwards; baskets in a
group are averaged with weights ``within_decay ** age_in_group``, groups with
``group_decay ** group_age``. The score is ``alpha * own + (1 - alpha) * mean(neighbours)``,
neighbours by cosine similarity of those vectors, searched exactly for a few thousand users and
approximately (faiss) for many (:mod:`endcap.plugins.user_neighbours`). With ``tune`` the
parameters are picked on each user's newest training basket (held out; a seeded sample of
``tune_users`` of them among themselves when there are more), then the model is refitted on
everything; the fit on the whole log that follows a fit on the history before the ranker's
label baskets takes that fit's choice (:attr:`endcap.TrainingData.earlier_fit`). Each user's
``keep_per_user`` best items are kept, best first, for serving.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

import endcap
import numpy as np
import pandas as pd
import scipy.sparse as sp
import structlog
from endcap.evaluation.metrics import ranking_metrics
from endcap.plugins._shared import BestFirstRows, top_of_product
from endcap.plugins.user_neighbours import NeighbourSearch, Search, is_approximate, nearest_neighbours
from endcap.types import TrainingData
from pydantic import Field

log = structlog.get_logger("endcap.plugins.tifuknn")


class TifuKnnCandidatesConfig(endcap.ComponentConfig):
    group_size: int = Field(7, ge=1)
    within_decay: float = Field(0.9, gt=0, le=1)
    group_decay: float = Field(0.7, gt=0, le=1)
    neighbours: int = Field(300, ge=1)
    alpha: float = Field(0.7, ge=0, le=1)
    keep_per_user: int = Field(400, ge=1, le=10_000)
    """Scores kept per user: what serving asks of a source (``candidates_per_source`` plus
    the items a request may leave out) must fit; memory grows with it times the users."""
    neighbour_search: Search = "auto"
    """``exact`` (users² work), ``approximate`` (faiss inverted file over a compact SVD of the
    users' vectors; see :mod:`endcap.plugins.user_neighbours`), or ``auto``: exact below
    ``exact_below`` users."""
    exact_below: int = Field(20_000, ge=0)
    dimensions: int = Field(128, ge=2)
    """Size of the compact user vectors the approximate search compares."""
    probes: int = Field(16, ge=1)
    """Inverted-file cells the approximate search visits per user (of about 2·√users): at a
    million users 16 find 92 % of the neighbours 32 find, in 57 % of the time."""
    approximate_neighbours: int = Field(100, ge=1)
    """The most neighbours blended when the search is approximate (from ``exact_below`` users):
    the blend's cost grows with them. Tuning still chooses ``alpha`` and ``group_decay`` with
    ``neighbours`` among its sample; among a million users the 100 nearest are closer than the
    300 nearest among those 20,000."""
    threads: int = Field(2, ge=1)
    """Threads the fit's compact SVD and blends run on (the answer is the same for any number)."""
    tune: bool = True
    """Choose ``group_decay``, ``neighbours`` and ``alpha`` from the grids below on held-out baskets."""
    tune_users: int = Field(20_000, ge=1)
    """Users the tuning scores: every user with a held-out basket up to this many (their
    neighbours searched among every user), else a seeded sample of this many, whose neighbours
    are searched among the sample itself, so that tuning costs the same at any number of users."""
    group_decay_grid: list[float] = [0.6, 0.8]
    neighbours_grid: list[int] = [300]
    alpha_grid: list[float] = [0.7, 0.8, 0.9]


def personal_vectors(frame: pd.DataFrame, shape: tuple[int, int], config: Any, group_decay: float) -> sp.csr_matrix:
    """Users × items time-decayed frequency vectors from (user_index, item_index, basket_index)
    lines, in float64 (:func:`blended_top` mixes them without a rounding per step)."""
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
    vectors = sp.csr_matrix((weights, (users, frame["item_index"].to_numpy())), shape=shape)
    vectors.sum_duplicates()
    return vectors


def blended_top(
    vectors: sp.csr_matrix,
    neighbours: np.ndarray,
    alpha: float,
    k: int,
    rows: np.ndarray | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``rows``' (default: every user's) ``k`` best items by ``alpha * own + (1 - alpha) *
    mean(neighbours' vectors)``: item indices (-1 padded) and scores, ``len(rows) × k``, best
    first, ties by item index. ``neighbours`` is ``len(rows) × K`` (-1 padded); each block of
    users is scored sparsely, so memory follows the items the block's neighbours bought."""
    n, items = vectors.shape
    rows = np.arange(n) if rows is None else np.asarray(rows)
    k = min(k, items)
    out = np.full((rows.size, k), -1, dtype=np.int32)
    values = np.zeros((rows.size, k), dtype=np.float32)
    width = max(neighbours.shape[1], 1)
    wide = vectors if vectors.dtype == np.float64 else vectors.astype(np.float64)
    for start in range(0, rows.size, block):
        chunk = slice(start, min(start + block, rows.size))
        near = neighbours[chunk]
        valid = near >= 0
        users = near.shape[0]
        # one product: each user's own row weighted alpha, each neighbour's (1 - alpha) / K
        mixing = sp.csr_matrix(
            (
                np.r_[np.full(users, alpha), np.full(int(valid.sum()), (1 - alpha) / width)],
                (np.r_[np.arange(users), np.nonzero(valid)[0]], np.r_[rows[chunk], near[valid]]),
            ),
            shape=(users, n),
        )
        owner, rank, item, score = top_of_product(mixing, wide, k)
        out[chunk][owner, rank] = item
        values[chunk][owner, rank] = score
    return out, values


def ranked_rows(
    vectors: sp.csr_matrix,
    search: NeighbourSearch,
    alpha: float,
    k: int,
    rows: np.ndarray,
    block: int = 8192,
    threads: int = 1,
) -> BestFirstRows:
    """:func:`blended_top` of ``rows`` (sorted user indices; the other users' rows stay empty)
    as :class:`BestFirstRows`, searched and blended ``block`` users at a time, so that memory
    follows the block and the answers kept, not the users times the neighbours. The blends run
    on ``threads`` threads while the next blocks are searched (the sparse products and sorts
    release the GIL); the answer is the same for any number."""
    lengths = np.zeros(vectors.shape[0], dtype=np.int64)
    chunks = [rows[start : start + block] for start in range(0, rows.size, block)]
    # room for every row's k answers; only the pages written become memory (no copy at the end)
    ids, scores = np.empty(rows.size * k, dtype=np.int32), np.empty(rows.size * k, dtype=np.float32)
    filled = 0

    def blend(chunk: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top_ids, top_scores = blended_top(vectors, near, alpha, k, chunk)
        kept = top_ids >= 0  # a prefix of each row: best first, padded with -1
        lengths[chunk] = kept.sum(axis=1)
        return top_ids[kept], top_scores[kept]

    def keep(answer: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal filled
        ids[filled : filled + answer[0].size], scores[filled : filled + answer[0].size] = answer
        filled += answer[0].size

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(blend, chunk, search.neighbours(chunk)))
            if len(pending) > threads:  # at most ``threads`` blocks' neighbours waiting
                keep(pending.popleft().result())
        while pending:
            keep(pending.popleft().result())
    starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
    return BestFirstRows(starts, ids[:filled], scores[:filled])


def _only(frame: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """``frame``'s lines of ``users`` (sorted user indices), renumbered ``0 .. len(users) - 1``."""
    kept = frame[np.isin(frame["user_index"].to_numpy(), users)]
    return kept.assign(user_index=np.searchsorted(users, kept["user_index"].to_numpy()).astype(np.int32))


class _Parameters(TypedDict):
    group_decay: float
    neighbours: int
    alpha: float


TUNED = ("group_decay", "neighbours", "alpha", "tuning_ndcg@10", "tuning_users")


def _earlier_tuning(data: TrainingData) -> dict[str, Any] | None:
    """The parameters tuned by this component's fit on the history before the label baskets in
    the same run (:attr:`TrainingData.earlier_fit`): chosen one basket earlier on the same users,
    the tuning (a third of a million-user fit) is not done twice."""
    earlier = data.earlier_fit
    if earlier is None or not all(name in earlier.params for name in TUNED):
        return None
    log.info("tifuknn_tuning_reused", **{name.replace("@", "_at_"): earlier.params[name] for name in TUNED})
    return {**{name: earlier.params[name] for name in TUNED}, "tuned_on": "history before the label baskets"}


class TifuKnnCandidates(endcap.CandidateGenerator):
    Config = TifuKnnCandidatesConfig
    config: TifuKnnCandidatesConfig

    def _neighbours(self, vectors: sp.csr_matrix, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        config = self.config
        return nearest_neighbours(
            vectors, k, rows, config.neighbour_search, config.exact_below, config.dimensions, config.probes
        )

    def _tune(self, data: TrainingData) -> dict[str, Any]:
        frame = data.interactions
        newest = frame.groupby("user_index")["basket_index"].transform("max")
        held_out = (frame["basket_index"] == newest) & (newest >= 1)
        fit_part, truth_part = frame[~held_out], frame[held_out]
        shape = data.user_items.shape
        users = np.unique(truth_part["user_index"].to_numpy())
        if users.size > self.config.tune_users:  # the sample among themselves: work follows the sample
            users = np.sort(np.random.default_rng(0).choice(users, self.config.tune_users, replace=False))
            fit_part, truth_part = _only(fit_part, users), _only(truth_part, users)
            shape, users = (users.size, shape[1]), np.arange(users.size)
        truth = sp.csr_matrix(
            (np.ones(len(truth_part), np.float32), (truth_part["user_index"], truth_part["item_index"])), shape=shape
        )[users]
        best: tuple[float, dict[str, Any]] = (-1.0, {})
        for group_decay in self.config.group_decay_grid:
            vectors = personal_vectors(fit_part, shape, self.config, group_decay)
            for k in self.config.neighbours_grid:
                neighbours = self._neighbours(vectors, k, users)
                for alpha in self.config.alpha_grid:
                    rankings, _ = blended_top(vectors, neighbours, alpha, 10, users)
                    ndcg = ranking_metrics(rankings, truth, ks=(10,))["ndcg@10"]
                    if ndcg > best[0]:
                        best = (ndcg, {"group_decay": group_decay, "neighbours": k, "alpha": alpha})
        return {**best[1], "tuning_ndcg@10": round(best[0], 4), "tuning_users": int(users.size)}

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        chosen: _Parameters = {
            "group_decay": self.config.group_decay,
            "neighbours": self.config.neighbours,
            "alpha": self.config.alpha,
        }
        tuning: dict[str, Any] = {}
        started = time.perf_counter()
        if self.config.tune:
            tuning = _earlier_tuning(data) or self._tune(data)
            chosen = {
                "group_decay": tuning["group_decay"],
                "neighbours": tuning["neighbours"],
                "alpha": tuning["alpha"],
            }
        tuned = time.perf_counter()
        vectors = personal_vectors(data.interactions, data.user_items.shape, self.config, chosen["group_decay"])
        config = self.config
        blended = chosen["neighbours"]
        if is_approximate(vectors.shape[0], config.neighbour_search, config.exact_below):
            blended = min(blended, config.approximate_neighbours)
        search = NeighbourSearch(
            vectors,
            blended,
            config.neighbour_search,
            config.exact_below,
            config.dimensions,
            config.probes,
            config.threads,
        )
        indexed = time.perf_counter()
        asked = data.asked_users  # only these users' answers are wanted (their neighbours: anyone)
        rows = np.arange(vectors.shape[0]) if asked is None else np.unique(asked)
        ranked_rows(vectors, search, chosen["alpha"], config.keep_per_user, rows, threads=config.threads).save(
            directory
        )
        log.info(
            "tifuknn_fit",
            users=int(rows.size),
            neighbours=blended,
            tune_s=round(tuned - started, 1),
            vectors_and_index_s=round(indexed - tuned, 1),
            search_and_blend_s=round(time.perf_counter() - indexed, 1),
        )
        return {
            **self.config.model_dump(exclude={"group_decay_grid", "neighbours_grid", "alpha_grid"}),
            **tuning,
            **chosen,
            "neighbours_blended": blended,
        }

    def load(self, context: endcap.ModelContext) -> None:
        self._ranked = BestFirstRows.load(context.directory)

    def generate(self, query: endcap.Query, user: endcap.UserFeatures, n: int) -> endcap.Candidates:
        return self._ranked.top(query.user_index, n)

    def generate_block(self, block: endcap.UserBlock, n: np.ndarray) -> endcap.CandidateBlock:
        return self._ranked.top_block(block.user_indices, n)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(TifuKnnCandidates, type_name="tifuknn")
