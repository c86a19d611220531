"""Learning-to-rank examples for rankers that learn (see :class:`endcap.types.RankingExamples`).

Each user gives a query group per label basket (``training.label_baskets`` of their newest).
Training and serving see the same distribution: the candidates come from the configured
candidate generators (trained on the history before each label basket), and the features from
the same :meth:`Pipeline.prepare` used to serve, fed with point-in-time reads of Feast's
offline store, so no feature sees the label basket or anything after it: the user's row as of
the basket, and each feature provider's product data as of the day before it. Candidate
generators that read product features when they load (``ModelContext.product_features``) get
them as of the earliest label day.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog
from endcap.config import EndcapConfig, FeatureStoreConfig
from endcap.data.training_data import coded_log, indexed_training_data
from endcap.features.historical import HistoricalFeatures
from endcap.features.repeat_purchases import label_share
from endcap.features.tables import day_cutoffs, label_depths, sampled_users
from endcap.model_versions import Manifest, component_dir
from endcap.plugin_host import Components, PluginHost
from endcap.registry import kind_of
from endcap.serving.block_prepare import prepare_block
from endcap.serving.model import ProductReader, ServingModel, assemble, load_components
from endcap.serving.pipeline import Pipeline
from endcap.types import Component, EarlierFit, Query, RankingExamples, TrainingData, UserBlock, UserFeatures
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.training")


def split_history(log_frame: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(history, label lines)``: the log (:func:`coded_log`) without the ``labels`` baskets
    (see :func:`endcap.features.tables.label_baskets`), and those baskets' lines."""
    key = (log_frame["user_id"].to_numpy(np.int64) << 32) | log_frame["basket_index"].to_numpy(np.int64)
    label_key = (labels["user_id"].to_numpy(np.int64) << 32) | labels["basket_index"].to_numpy(np.int64)
    is_label = np.isin(key, label_key)
    return log_frame[~is_label], log_frame[is_label]


def build_ranking_examples(
    workspace: Workspace,
    host: PluginHost,
    config: EndcapConfig,
    data: TrainingData,
    exclude_purchased: bool = False,
    feature_store: FeatureStoreConfig | None = None,
    history_fits: HistoryFits | None = None,
) -> RankingExamples:
    """Examples from each user's label baskets at every depth of ``training.label_baskets``
    (:func:`label_depths`: at depth ``k`` the log without each user's newest ``k`` baskets, and
    its newest basket, or newest quarter of lines in a no-repeat log); with ``exclude_purchased``
    the candidates leave out what the user bought before, as serving will, so the ranker learns
    among the rest. The log is ``data``'s, grouped and split by its integer indices (see
    :func:`coded_log`): no string id is hashed until a label basket's user is read. With
    ``history_fits``, the newest depth's serving side is trained into it and kept there."""
    log_frame = coded_log(data)
    historical = HistoricalFeatures(workspace, feature_store or config.feature_store)
    blocks: list[Block] = []
    names: tuple[str, ...] = ()
    label_items = 0
    sampled = sampled_users(log_frame["user_id"], config.training.ranking_users)
    historical.require_training_users(data.catalog.n_users, None if sampled is None else data.catalog.user_ids[sampled])
    if sampled is not None:
        log.info(
            "ranking_examples_sampled", users=sampled.size, of=data.catalog.n_users, setting="training.ranking_users"
        )
    for level, (truncated, labels) in enumerate(
        label_depths(log_frame, label_share(log_frame), config.training.label_baskets)
    ):
        if sampled is not None:
            labels = labels[labels["user_id"].isin(sampled)]
        historical.require_snapshots(day_cutoffs(labels["label_time"]))
        depth = DepthExamples(host, config, data, historical, exclude_purchased)
        started = time.perf_counter()
        depth_blocks, names, lines = depth.build(truncated, labels, history_fits if level == 0 else None)
        blocks += depth_blocks
        label_items += lines
        log.info(
            "ranking_examples_depth",
            depth=level,
            users=len(depth_blocks),
            label_items=lines,
            seconds=round(time.perf_counter() - started, 1),
        )
    examples = stack_blocks(blocks, names)
    log.info(
        "ranking_examples",
        groups=len(blocks),
        users=len(set(examples.user_ids)),
        rows=int(examples.values.shape[0]),
        positives=int(examples.labels.sum()),
        label_items=label_items,
    )
    return examples


class DepthExamples:
    """The examples of one depth: the serving side trained on the history before the label
    baskets, and each user's candidates and features as of their label day."""

    def __init__(
        self,
        host: PluginHost,
        config: EndcapConfig,
        data: TrainingData,
        historical: HistoricalFeatures,
        exclude_purchased: bool,
    ) -> None:
        self.host, self.config, self.data, self.historical = host, config, data, historical
        self.exclude_purchased = exclude_purchased

    def build(
        self, log_frame: pd.DataFrame, label_rows: pd.DataFrame, kept: HistoryFits | None = None
    ) -> tuple[list[Block], tuple[str, ...], int]:
        """``(blocks, feature names, label lines)`` for the users of ``label_rows``; the serving
        side is trained into ``kept`` (and recorded there) when given, else into a temporary
        directory."""
        history_log, label_lines = split_history(log_frame, label_rows)
        labels = label_rows.drop_duplicates("user_id").reset_index(drop=True)
        catalog = self.data.catalog
        history = indexed_training_data(
            history_log.rename(columns={"user_id": "user_index", "item_id": "item_index"}), catalog
        )
        asked = labels["user_id"].to_numpy(np.int32)
        history = replace(history, asked_users=np.unique(asked))
        components = self.host.build_components()
        blocks: list[Block] = []
        names: tuple[str, ...] = ()
        cutoffs = day_cutoffs(labels["label_time"])
        products = PointInTimeProducts(self.historical, list(catalog.item_ids), cutoffs)
        with contextlib.ExitStack() as stack:
            directory = (
                kept.directory if kept else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=HISTORY)))
            )
            first = products.reader(min(cutoffs, default=None))
            fitted = train_serving_side(self.host, components, history, directory, first)
            if kept:
                kept.params.update(fitted)
            user_ids = catalog.user_ids[asked]
            user_rows = self.historical.users(user_ids.tolist(), labels["label_time"].tolist())
            label_starts = np.searchsorted(label_lines["user_id"].to_numpy(), asked)  # lines sorted by user
            label_ends = np.searchsorted(label_lines["user_id"].to_numpy(), asked, side="right")
            label_items = label_lines["item_id"].to_numpy(np.int32)
            cutoff_of_user = pd.DatetimeIndex(labels["label_time"]).floor("D")
            stub = Manifest(
                "history", "", "", "", len(history_log), 0, 0, {}, "", exclude_purchased=self.exclude_purchased
            )
            shoppers = [
                Shopper(str(user_id), when.timestamp(), row, np.unique(label_items[start:end]))
                for user_id, when, row, start, end in zip(
                    user_ids, labels["label_time"], user_rows, label_starts, label_ends, strict=True
                )
            ]
            for cutoff in cutoffs:
                model = assemble(stub, catalog, components, products.reader(cutoff))
                pipeline = Pipeline(model, lambda user_id: {}, self.config.serving, budgets=False)
                on_day = np.flatnonzero(cutoff_of_user == cutoff)
                for start in range(0, on_day.size, BLOCK_USERS):
                    chunk = [shoppers[row] for row in on_day[start : start + BLOCK_USERS]]
                    examples, names = block_examples(pipeline, model, self.config.serving.default_k, chunk)
                    blocks.extend(examples)
        return blocks, names, len(label_lines)


Block = tuple[np.ndarray, np.ndarray, str]
"""One user's examples: feature rows, labels (1.0 for an item of the label basket), user id."""


class PointInTimeProducts:
    """Product features as of each label day, read from the offline store once per set of
    references (one point-in-time join over every item and day) and kept."""

    def __init__(self, historical: HistoricalFeatures, item_ids: list[str], cutoffs: list[pd.Timestamp]) -> None:
        self.historical, self.item_ids, self.cutoffs = historical, item_ids, cutoffs
        self._read: dict[tuple[str, ...], dict[pd.Timestamp, pd.DataFrame]] = {}

    def reader(self, cutoff: pd.Timestamp | None) -> ProductReader:
        """``references → frame`` as of ``cutoff`` (one of the label days)."""

        def read(references: Sequence[str]) -> pd.DataFrame:
            key = tuple(references)
            if key not in self._read:
                self._read[key] = self.historical.product_features(key, self.item_ids, self.cutoffs)
            if cutoff is None:
                return pd.DataFrame(np.nan, index=range(len(self.item_ids)), columns=[r.split(":", 1)[1] for r in key])
            return self._read[key][cutoff]

        return read


def train_serving_side(
    host: PluginHost,
    components: Components,
    history: TrainingData,
    directory: Path,
    products: ProductReader | None = None,
) -> dict[str, Mapping[str, Any]]:
    """Train the candidate generators, filters and feature providers on ``history`` into
    ``directory`` and load them (``products`` is what ``ModelContext.product_features`` reads);
    what each fit returned, by ``kind/name``."""
    serving_side = [*components.candidates.values(), *components.filters.values(), *components.features.values()]
    fitted = {
        component_key(component): train_component(
            host, component, history, directory, "history before the label baskets"
        )
        for component in serving_side
    }
    load_components(serving_side, directory, history.catalog, history.user_items, products)
    return fitted


def component_key(component: Component) -> str:
    """``kind/name``: how manifests and logs name a configured component."""
    return f"{kind_of(type(component))}/{component.name}"


def train_component(
    host: PluginHost, component: Component, data: TrainingData, directory: Path, on: str = "the whole log"
) -> Mapping[str, Any]:
    """Train ``component`` through the training hook into its own directory under ``directory``
    (created), logging how long it took; what its ``fit`` returned."""
    target = component_dir(directory, kind_of(type(component)), component.name)
    target.mkdir(parents=True)
    started = time.perf_counter()
    params = host.manager.hook.endcap_train_component(component=component, data=data, directory=target)
    log.info(
        "component_trained", component=component_key(component), seconds=round(time.perf_counter() - started, 1), on=on
    )
    return dict(params or {})


HISTORY = "endcap-history-"
"""Prefix of the temporary directories the serving side is trained into on the history."""


@dataclass
class HistoryFits:
    """Where the newest depth's serving side is trained on the history before the label
    baskets and kept for the rest of the training run, and what each fit returned by
    ``kind/name``: the whole log's fits start from them (:attr:`TrainingData.earlier_fit`)."""

    directory: Path
    params: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def earlier_fit(self, component: Component) -> EarlierFit | None:
        """``component``'s fit on the history, when it had one."""
        key = component_key(component)
        if key not in self.params:
            return None
        return EarlierFit(self.params[key], component_dir(self.directory, kind_of(type(component)), component.name))


BLOCK_USERS = 512
"""Shoppers whose examples are prepared together (see :func:`block_examples`)."""


@dataclass(frozen=True)
class Shopper:
    """One query group to build: the user, the label basket's time (seconds since 1970), their
    feature-store row as of just before it, and the items of the basket."""

    user_id: str
    as_of: float
    row: dict[str, Any]
    label_items: np.ndarray
    """The basket's item indices (sorted, distinct)."""


def block_examples(
    pipeline: Pipeline, model: ServingModel, k: int, shoppers: Sequence[Shopper]
) -> tuple[list[Block], tuple[str, ...]]:
    """The candidates and features of ``shoppers`` as serving prepares them at their label
    times, labelled by their baskets; and the feature names. Prepared for all of them at once
    (:func:`endcap.serving.block_prepare.prepare_block`); a shopper the request pipeline treats
    as a special case (no statistics, every candidate excluded), or every shopper when a
    component fails on the block, goes through :meth:`Pipeline.prepare` on their own."""
    queries = tuple(Query(s.user_id, model.user_index[s.user_id], k, as_of=s.as_of) for s in shoppers)
    block = UserBlock(queries, tuple(model.user_features(s.row) for s in shoppers))
    try:
        prepared = prepare_block(pipeline, block, k)
    except Exception as exc:
        log.warning("ranking_examples_one_by_one", users=len(block), error=f"{type(exc).__name__}: {exc}")
        return [
            _alone(pipeline, model, query, user, s)
            for query, user, s in zip(queries, block.users, shoppers, strict=True)
        ], pipeline.feature_names
    features = prepared.features
    label_keys = np.concatenate([(row << 32) | s.label_items.astype(np.int64) for row, s in enumerate(shoppers)])
    labels = np.isin((prepared.rows << 32) | features.ids.astype(np.int64), label_keys).astype(np.float32)
    examples: list[Block] = []
    for row, (query, user, shopper) in enumerate(zip(queries, block.users, shoppers, strict=True)):
        if prepared.prepared[row]:
            span = slice(int(prepared.offsets[row]), int(prepared.offsets[row + 1]))
            examples.append((features.values[span], labels[span], shopper.user_id))
        else:
            examples.append(_alone(pipeline, model, query, user, shopper))
    return examples, features.names


def _alone(pipeline: Pipeline, model: ServingModel, query: Query, user: UserFeatures, shopper: Shopper) -> Block:
    """One shopper's examples through :meth:`Pipeline.prepare`."""
    prepared = pipeline.prepare(query, user, errors={})
    labels = np.isin(prepared.features.ids, shopper.label_items).astype(np.float32)
    return prepared.features.values, labels, shopper.user_id


def stack_blocks(blocks: list[Block], names: tuple[str, ...]) -> RankingExamples:
    values = np.vstack([b[0] for b in blocks]) if blocks else np.zeros((0, len(names)), np.float32)
    return RankingExamples(
        names=names,
        values=values.astype(np.float32),
        labels=np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.float32),
        groups=np.array([len(b[1]) for b in blocks], dtype=np.int32),
        user_ids=tuple(b[2] for b in blocks),
    )
