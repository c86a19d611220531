"""``endcap evaluate``: an honest offline evaluation on a holdout of the log.

The holdout follows a protocol (:mod:`endcap.evaluation.holdout`): ``last-basket`` holds out each user's
newest basket as the *test* target and the one before it as the *validation* target (users with
at least three baskets are evaluated); ``random-holdout`` holds out a seeded random 25 % of each
user's distinct items as the test target and another 25 % as the validation target (users with
at least four distinct items), for logs that have no baskets worth the name.

For each target the whole stack is rebuilt from its training lines alone — features (Feast apply
and materialize into a workspace of its own under ``evaluation/``), every component, the ranker —
and each evaluated user is answered through the serving pipeline. Tuning happens inside training,
so the test target is read only to report. Beside the pipeline it scores G-TopFreq, P-TopFreq and
a plain implicit ALS on the same training rows (:mod:`endcap.evaluation.baselines`); when the rebuilt
model's manifest says ``exclude_purchased`` (a no-repeat domain) every system, the baselines
included, leaves out the user's training items.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import structlog
from endcap.config import EndcapConfig, FeatureStoreConfig
from endcap.data.integer_codes import utc_microseconds
from endcap.data.training_data import build_training_data
from endcap.evaluation.baselines import als_baseline, frequency_baselines
from endcap.evaluation.holdout import (
    DEFAULT_SEED,
    TARGETS,
    TargetSplit,
    holdout_fingerprint,
    split_for,
    temporal_split,
)
from endcap.evaluation.intervals import Interval, bootstrap_interval, paired_interval
from endcap.evaluation.metrics import pad_rankings, per_user_metrics, ranking_metrics, recall_curve
from endcap.plugin_host import PluginHost
from endcap.types import Query, TrainingData
from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.features.store import OnlineFeatures
    from endcap.serving.model import ServingModel
    from endcap.serving.pipeline import Pipeline

log = structlog.get_logger("endcap.evaluation")

KS = (10, 20)
MAX_K = max(KS)
GATE_K = 10
"""The cut-off of the per-user NDCG the promotion gate compares."""

__all__ = ["TargetSplit", "evaluate", "evaluate_target", "holdout_validation", "split_for", "temporal_split"]


COMBINED = ("pipeline", "merged candidates")
"""The rows that combine sources; every other row is a single system (a source alone, a baseline)."""


@dataclass
class SystemResult:
    metrics: dict[str, float]
    curve: list[float]
    intervals: dict[str, Interval] = field(default_factory=dict)
    """95 % bootstrap intervals over users of ``recall@k`` and ``ndcg@k``."""


@dataclass(frozen=True)
class Versus:
    """The pipeline against the best single system (by NDCG@10) on the same users, paired."""

    reference: str
    differences: dict[str, Interval]
    """Mean per-user difference, pipeline − reference, and its paired bootstrap interval, by metric."""
    better: bool
    """Whether the whole 95 % interval of the NDCG@10 difference lies above zero."""


@dataclass
class TargetResult:
    name: str
    users: int
    systems: dict[str, SystemResult] = field(default_factory=dict)
    candidate_recall: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0
    protocol: str = "last-basket"
    seed: int | None = None
    repeat_share: float | None = None
    """The rebuilt model's measured repeat share (its manifest's)."""
    exclude_purchased: bool = False
    """Whether the rebuilt model (and so every system here) left out the users' training items."""
    fingerprint: str = ""
    """:func:`endcap.evaluation.holdout.holdout_fingerprint` of the split."""
    user_ids: list[str] = field(default_factory=list, repr=False)
    """The evaluated users, in the order of :attr:`per_user`."""
    per_user: dict[str, list[float]] = field(default_factory=dict, repr=False)
    """NDCG@10 of each evaluated user, by system (not written to the JSON report)."""
    versus: Versus | None = None
    """The pipeline against the best single system, when both were scored."""


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order]


@dataclass(frozen=True)
class RebuiltModel:
    """The whole stack rebuilt from a split's training lines, ready to answer its users."""

    model: ServingModel
    pipeline: Pipeline
    online: OnlineFeatures
    seconds: float


@dataclass(frozen=True)
class TargetMatrices:
    """A split's target and its users' training items as users × items matrices (items unseen
    in training get columns after the catalog's), rows in ``users`` order."""

    users: list[str]
    user_index: np.ndarray
    truth: sp.csr_matrix
    history: sp.csr_matrix
    training: TrainingData
    """The split's training lines in the model's catalog (what the baselines train on)."""
    as_of: np.ndarray
    """When each user is answered, in seconds since 1970: their target's first purchase, or their
    last training line when that is later."""


@dataclass
class Rankings:
    """What each system recommended each user (rows in user order), and each source's candidates."""

    systems: dict[str, list[np.ndarray]]
    candidates: dict[str, list[np.ndarray]]


def rebuild(workspace: Workspace, host: PluginHost, config: EndcapConfig, split: TargetSplit) -> RebuiltModel:
    """Features (a workspace of its own under ``evaluation/``), every component and the ranker,
    from ``split.training`` alone."""
    from endcap.features.store import OnlineFeatures, build_features
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline
    from endcap.training.fit import train

    started = time.perf_counter()
    sub = Workspace(workspace.root / "evaluation" / split.name)
    shutil.rmtree(sub.models, ignore_errors=True)  # versions of an earlier run are never read again
    sub.interactions.parent.mkdir(parents=True, exist_ok=True)
    split.training.to_parquet(sub.interactions, index=False)
    own_store = FeatureStoreConfig()  # local SQLite inside ``sub``, whatever store the workspace serves from
    # the plugins' Feast views too, over the shop's data files in the workspace: what a plugin
    # contributes is trained on and measured here as in the workspace itself
    build_features(sub, split.training, host, feature_store=own_store, plugin_data=workspace.features)
    train(sub, host, feature_store=own_store)
    online = OnlineFeatures(sub, own_store)
    model = load_serving_model(sub, host, online)
    pipeline = Pipeline(model, online.user, config.serving, budgets=False)
    return RebuiltModel(model, pipeline, online, time.perf_counter() - started)


def target_matrices(split: TargetSplit, model: ServingModel) -> TargetMatrices:
    """The target and the evaluated users' training items, in the model's item columns."""
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
    history.resize((len(users), width))  # type: ignore[arg-type]  # scipy-stubs types shape as Never
    # answered when their target starts, never before their last training line (a random holdout
    # interleaves the two)
    starts = split.target.groupby("user_id")["timestamp"].min().loc[users]
    trained = split.training.groupby("user_id")["timestamp"].max().reindex(users).fillna(starts)
    as_of = np.maximum(utc_microseconds(starts), utc_microseconds(trained)) / 1e6
    return TargetMatrices(users, user_index, truth, history, training_data, as_of)


def rank_users(rebuilt: RebuiltModel, matrices: TargetMatrices, exclude: bool, baselines: bool) -> Rankings:
    """Each evaluated user answered through the serving pipeline: the pipeline's ranking, the
    merged candidates by summed source score, and (with ``baselines``) each source alone."""
    model, pipeline, history = rebuilt.model, rebuilt.pipeline, matrices.history
    rankings = Rankings({"pipeline": [], "merged candidates": []}, {name: [] for name in pipeline.source_names})
    if baselines:
        rankings.systems.update({f"{name} alone": [] for name in pipeline.source_names})
    rankings.candidates["all sources"] = []
    for row, (user_id, index) in enumerate(zip(matrices.users, matrices.user_index, strict=True)):
        query = Query(user_id=user_id, user_index=int(index), k=MAX_K, as_of=float(matrices.as_of[row]))
        user = model.user_features(rebuilt.online.user(user_id))
        prepared = pipeline.prepare(query, user, errors={})
        ids, source_scores = prepared.features.ids, prepared.source_scores
        ranker_scores = pipeline.rank(query, prepared.features, source_scores, {})
        if exclude:  # what the serving pipeline leaves out in a no-repeat domain, whatever stage does it
            keep = ~np.isin(ids, history.indices[history.indptr[row] : history.indptr[row + 1]])
            ids, source_scores, ranker_scores = ids[keep], source_scores[keep], ranker_scores[keep]
        rankings.systems["pipeline"].append(_top(ranker_scores, ids, MAX_K))
        rankings.systems["merged candidates"].append(_top(source_scores.sum(axis=1), ids, MAX_K))
        for column, name in enumerate(pipeline.source_names):
            proposed = source_scores[:, column] > 0
            if baselines:
                rankings.systems[f"{name} alone"].append(_top(source_scores[proposed, column], ids[proposed], MAX_K))
            rankings.candidates[name].append(ids[proposed])
        rankings.candidates["all sources"].append(ids)
    return rankings


def with_baselines(
    rankings: dict[str, list[np.ndarray]], matrices: TargetMatrices, exclude: bool, baselines: bool
) -> dict[str, list[np.ndarray]]:
    """The systems to score: G-TopFreq first, then (with ``baselines``) P-TopFreq, ALS and every
    pipeline variant; without, the pipeline alone beside G-TopFreq."""
    training_data = matrices.training
    g_top, p_top = frequency_baselines(training_data, matrices.users, MAX_K, exclude_purchased=exclude)
    if not baselines:
        return {"G-TopFreq": g_top, "pipeline": rankings["pipeline"]}
    als = als_baseline(training_data, matrices.users, MAX_K, exclude_purchased=exclude)
    return {"G-TopFreq": g_top, "P-TopFreq": p_top, "ALS": als, **rankings}


def score_systems(
    result: TargetResult, systems: dict[str, list[np.ndarray]], rankings: Rankings, matrices: TargetMatrices
) -> None:
    """Fill ``result``'s metrics, recall curves, per-user NDCG and candidate recall."""
    truth, history = matrices.truth, matrices.history
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for system, rows in systems.items():
        recommended = pad_rankings(rows, MAX_K)
        per_user[system] = per_user_metrics(recommended, truth, KS)
        result.systems[system] = SystemResult(
            ranking_metrics(recommended, truth, history, KS),
            recall_curve(recommended, truth, MAX_K),
            {key: bootstrap_interval(values) for key, values in per_user[system].items()},
        )
        result.per_user[system] = per_user[system][f"ndcg@{GATE_K}"].tolist()
    result.versus = versus_best_single(per_user)
    sizes = truth.getnnz(axis=1)
    for name, rows in rankings.candidates.items():
        width_needed = max((r.size for r in rows), default=1)
        recommended = pad_rankings(rows, max(width_needed, 1))
        result.candidate_recall[name] = (
            ranking_metrics(recommended, truth, ks=(recommended.shape[1],))[f"recall@{recommended.shape[1]}"]
            if sizes.sum()
            else 0.0
        )


def versus_best_single(per_user: dict[str, dict[str, np.ndarray]]) -> Versus | None:
    """The pipeline against the single system with the best mean NDCG@10, paired per user."""
    singles = [system for system in per_user if system not in COMBINED]
    if "pipeline" not in per_user or not singles:
        return None
    best = max(singles, key=lambda system: float(per_user[system][f"ndcg@{GATE_K}"].mean()))
    pipeline = per_user["pipeline"]
    differences = {key: paired_interval(pipeline[key], per_user[best][key]) for key in pipeline}
    return Versus(best, differences, better=differences[f"ndcg@{GATE_K}"].low > 0.0)


def evaluate_target(
    workspace: Workspace, config: EndcapConfig, host: PluginHost, split: TargetSplit, baselines: bool = True
) -> TargetResult:
    """Rebuild features and models from ``split.training`` and score every system on its target.

    ``baselines=False`` scores the pipeline and G-TopFreq only (what the promotion gate needs)."""
    started = time.perf_counter()
    rebuilt = rebuild(workspace, host, config, split)
    model = rebuilt.model
    exclude = bool(model.manifest.exclude_purchased)
    matrices = target_matrices(split, model)
    rankings = rank_users(rebuilt, matrices, exclude, baselines)
    systems = with_baselines(rankings.systems, matrices, exclude, baselines)
    result = TargetResult(
        split.name,
        len(matrices.users),
        model_version=model.manifest.version,
        protocol=split.protocol,
        seed=split.seed,
        repeat_share=model.manifest.repeat_share,
        exclude_purchased=exclude,
        fingerprint=holdout_fingerprint(split),
        user_ids=[str(u) for u in matrices.users],
    )
    score_systems(result, systems, rankings, matrices)
    result.train_seconds = rebuilt.seconds
    result.evaluate_seconds = time.perf_counter() - started - rebuilt.seconds
    log.info("evaluated", target=split.name, users=len(matrices.users), seconds=round(time.perf_counter() - started, 1))
    return result


def evaluate(
    workspace: Workspace,
    config: EndcapConfig,
    host: PluginHost,
    log_frame: pd.DataFrame,
    protocol: str = "last-basket",
    seed: int = DEFAULT_SEED,
) -> list[TargetResult]:
    """Validation, then test, under ``protocol``: the test target is read once, for the report."""
    return [
        evaluate_target(workspace, config, host, split_for(log_frame, target, protocol, seed)) for target in TARGETS
    ]


@dataclass(frozen=True)
class HoldoutValidation:
    """What ``endcap train``'s validation step records: figures for the manifest and the per-user
    values the promotion gate compares (see :mod:`endcap.release.validation_record`)."""

    metrics: dict[str, float]
    """The pipeline's metrics, plus ``popularity_ndcg@10`` (G-TopFreq on the same holdout)."""
    fingerprint: str
    user_ids: list[str]
    pipeline: np.ndarray
    """Per-user NDCG@10 of the pipeline, in :attr:`user_ids` order."""
    popularity: np.ndarray
    """Per-user NDCG@10 of G-TopFreq."""


def holdout_split(log_frame: pd.DataFrame) -> TargetSplit:
    """The validation holdout of ``endcap train``: each user's newest basket (last-basket test)
    in a log where people buy again; in one where they (almost) never do, a seeded random quarter
    of each user's items (random-holdout test), since a "basket" there is one day's ratings."""
    from endcap.features.repeat_purchases import label_share

    no_repeats = label_share(log_frame) > 0
    split = split_for(log_frame, "test", "random-holdout" if no_repeats else "last-basket")
    return TargetSplit("holdout", split.training, split.target, split.protocol, split.seed)


def holdout_validation(
    workspace: Workspace, config: EndcapConfig, host: PluginHost, split: TargetSplit
) -> HoldoutValidation:
    """The configuration of ``host`` trained on ``split.training`` and scored on its target,
    with G-TopFreq beside it: the validation figures recorded in a model's manifest."""
    result = evaluate_target(workspace, config, host, split, baselines=False)
    metrics = {key: round(value, 5) for key, value in result.systems["pipeline"].metrics.items()}
    metrics[f"popularity_ndcg@{GATE_K}"] = round(result.systems["G-TopFreq"].metrics[f"ndcg@{GATE_K}"], 5)
    return HoldoutValidation(
        metrics,
        result.fingerprint,
        result.user_ids,
        np.asarray(result.per_user["pipeline"], dtype=np.float64),
        np.asarray(result.per_user["G-TopFreq"], dtype=np.float64),
    )
