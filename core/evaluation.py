"""``endcap evaluate``: an honest offline evaluation on a temporal split.

Each user's newest basket is the *test* basket and the one before it the *validation* basket;
everything earlier is training data. Only users with at least three baskets are evaluated (the
others still train the models). For a generic ``user_id,item_id,timestamp`` log a basket is a
user's purchases on one UTC day, so the test basket is each user's last day of purchases.

For each target the whole stack is rebuilt from the lines before it — features (Feast apply and
materialize into a workspace of its own under ``evaluation/``), every component, the ranker — and
each evaluated user is answered through the serving pipeline. Tuning happens inside training, on
the newest training basket, so the test basket is read only to report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import structlog
from endcap.config import EndcapConfig
from endcap.feature_tables import add_basket_index
from endcap.ingest import CANONICAL_COLUMNS
from endcap.metrics import pad_rankings, ranking_metrics, recall_curve
from endcap.plugin_host import PluginHost
from endcap.training_data import build_training_data
from endcap.types import Query, TrainingData
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.evaluation")

KS = (10, 20)
MAX_K = max(KS)
TARGETS = ("validation", "test")


@dataclass(frozen=True)
class TargetSplit:
    name: str
    training: pd.DataFrame
    """Canonical log lines the models may learn from."""
    target: pd.DataFrame
    """The evaluated users' target-basket lines."""


def temporal_split(log_frame: pd.DataFrame, target: str) -> TargetSplit:
    """``test``: each evaluated user's newest basket; ``validation``: the one before it."""
    frame = add_basket_index(log_frame) if "basket_index" not in log_frame.columns else log_frame
    newest = frame.groupby("user_id", sort=False)["basket_index"].transform("max")
    evaluated = newest >= 2
    offset = {"test": 0, "validation": 1}[target]
    target_basket = newest - offset
    is_target = evaluated & (frame["basket_index"] == target_basket)
    after_target = evaluated & (frame["basket_index"] > target_basket)
    training = frame[~is_target & ~after_target]
    return TargetSplit(target, training[list(CANONICAL_COLUMNS)], frame[is_target][list(CANONICAL_COLUMNS)])


@dataclass
class SystemResult:
    metrics: dict[str, float]
    curve: list[float]


@dataclass
class TargetResult:
    name: str
    users: int
    systems: dict[str, SystemResult] = field(default_factory=dict)
    candidate_recall: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order]


def evaluate_target(
    workspace: Workspace, config: EndcapConfig, host: PluginHost, split: TargetSplit, baselines: bool = True
) -> TargetResult:
    """Rebuild features and models from ``split.training`` and score every system on its target."""
    from endcap.feature_store import OnlineFeatures, build_features
    from endcap.pipeline import Pipeline
    from endcap.serving_model import load_serving_model
    from endcap.training import train

    started = time.perf_counter()
    sub = Workspace(workspace.root / "evaluation" / split.name)
    sub.interactions.parent.mkdir(parents=True, exist_ok=True)
    split.training.to_parquet(sub.interactions, index=False)
    build_features(sub, split.training)
    manifest = train(sub, host, validate=False)
    online = OnlineFeatures(sub)
    model = load_serving_model(sub, host, online)
    pipeline = Pipeline(model, online.user, config.serving, budgets=False)
    trained = time.perf_counter()

    catalog = model.catalog
    users = sorted(split.target["user_id"].unique())
    user_rows = {u: i for i, u in enumerate(users)}
    unseen = sorted(set(split.target["item_id"]) - set(catalog.item_ids.tolist()))
    columns = model.item_indices(split.target["item_id"].tolist()).astype(np.int64)
    unseen_index = {item: catalog.n_items + j for j, item in enumerate(unseen)}
    missing = columns < 0
    columns[missing] = [unseen_index[i] for i in split.target["item_id"].to_numpy()[missing]]
    width = catalog.n_items + len(unseen)
    truth = sp.csr_matrix(
        (np.ones(len(columns), np.float32), ([user_rows[u] for u in split.target["user_id"]], columns)),
        shape=(len(users), width),
    )
    truth.sum_duplicates()
    truth.data[:] = 1.0
    user_index = np.array([model.user_index[u] for u in users])
    training_data = build_training_data(split.training, catalog=catalog)
    history = sp.csr_matrix(training_data.user_items[user_index])
    history.resize((len(users), width))

    rankings: dict[str, list[np.ndarray]] = {"pipeline": [], "merged candidates": []}
    rankings.update({f"{name} alone": [] for name in pipeline.source_names})
    candidate_sets: dict[str, list[np.ndarray]] = {name: [] for name in pipeline.source_names}
    candidate_sets["all sources"] = []
    for user_id, index in zip(users, user_index, strict=True):
        query = Query(user_id=user_id, user_index=int(index), k=MAX_K)
        user = model.user_features(online.user(user_id))
        prepared = pipeline.prepare(query, user, errors={})
        ids, source_scores = prepared.features.ids, prepared.source_scores
        ranker_scores = pipeline.rank(query, prepared.features, source_scores, {})
        rankings["pipeline"].append(_top(ranker_scores, ids, MAX_K))
        rankings["merged candidates"].append(_top(source_scores.sum(axis=1), ids, MAX_K))
        for column, name in enumerate(pipeline.source_names):
            proposed = source_scores[:, column] > 0
            rankings[f"{name} alone"].append(_top(source_scores[proposed, column], ids[proposed], MAX_K))
            candidate_sets[name].append(ids[proposed])
        candidate_sets["all sources"].append(ids)

    if baselines:
        g_top, p_top = frequency_baselines(training_data, users)
        rankings = {"G-TopFreq": g_top, "P-TopFreq": p_top, **rankings}

    result = TargetResult(split.name, len(users), model_version=manifest.version)
    for system, rows in rankings.items():
        recommended = pad_rankings(rows, MAX_K)
        result.systems[system] = SystemResult(
            ranking_metrics(recommended, truth, history, KS), recall_curve(recommended, truth, MAX_K)
        )
    sizes = truth.getnnz(axis=1)
    for name, rows in candidate_sets.items():
        width_needed = max((r.size for r in rows), default=1)
        recommended = pad_rankings(rows, max(width_needed, 1))
        result.candidate_recall[name] = (
            ranking_metrics(recommended, truth, ks=(recommended.shape[1],))[f"recall@{recommended.shape[1]}"]
            if sizes.sum()
            else 0.0
        )
    result.train_seconds = trained - started
    result.evaluate_seconds = time.perf_counter() - trained
    log.info("evaluated", target=split.name, users=len(users), seconds=round(time.perf_counter() - started, 1))
    return result


def frequency_baselines(data: TrainingData, users: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """G-TopFreq (global popularity) and P-TopFreq (the user's most frequent, then popular)."""
    counts = data.user_items
    popular = np.argsort(-np.asarray(counts.sum(axis=0)).ravel(), kind="stable")[: MAX_K * 2]
    index = pd.Index(data.catalog.user_ids)
    g_top, p_top = [], []
    for user in users:
        row = counts[index.get_loc(user)]
        own = row.indices[np.argsort(-row.data, kind="stable")][:MAX_K]
        fill = popular[~np.isin(popular, own)][: MAX_K - own.size]
        g_top.append(popular[:MAX_K])
        p_top.append(np.concatenate([own, fill]))
    return g_top, p_top


def evaluate(
    workspace: Workspace, config: EndcapConfig, host: PluginHost, log_frame: pd.DataFrame
) -> list[TargetResult]:
    """Validation, then test: the test basket is read once, for the report."""
    return [evaluate_target(workspace, config, host, temporal_split(log_frame, target)) for target in TARGETS]


def holdout_metrics(workspace: Workspace, config: EndcapConfig, host: PluginHost, log_frame: pd.DataFrame) -> dict:
    """The pipeline's metrics on each user's newest basket when trained on everything before it:
    the validation figures recorded in a model's manifest."""
    split = temporal_split(log_frame, "test")
    split = TargetSplit("holdout", split.training, split.target)
    result = evaluate_target(workspace, config, host, split, baselines=False)
    return {key: round(value, 5) for key, value in result.systems["pipeline"].metrics.items()}
