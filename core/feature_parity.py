"""Offline/online parity of feature providers: the columns a learned ranker is trained on (point-
in-time training examples) against the columns a server computes, for the same shopper at the
same moment.

The check needs a log whose shoppers all shop on the same days: every label basket is then on
the last day, and the examples' features as of that day describe the same moment as the online
store of a workspace holding the log without that day. The candidate generators of both are
trained on the same lines, so each shopper gets the same candidates and every row must match.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from endcap.config import EndcapConfig
from endcap.plugin_host import PluginHost
from endcap.workspace import Workspace

DataWriter = Callable[[Path, pd.DataFrame], None]
"""``(features_dir, log) → None``: writes a plugin's Feast data files for ``log``."""


@dataclass(frozen=True)
class ParityRows:
    """One shopper's feature rows both ways, each sorted, with the columns' names."""

    user_id: str
    names: tuple[str, ...]
    offline: np.ndarray
    online: np.ndarray


def same_day_log(users: int = 24, items: int = 30, days: int = 6, seed: int = 5) -> pd.DataFrame:
    """A generic log (``user_id,item_id,timestamp``) in which every shopper shops on the same
    afternoons (see :func:`endcap.testing.purchase_log`)."""
    from endcap.testing import purchase_log

    return purchase_log(users, items, baskets=days, seed=seed, same_days=True)


def parity_config(features: Mapping[str, Any]) -> EndcapConfig:
    """Two quick sources, the built-in providers plus ``features`` (a default of a type ``features``
    configures again is left out), a linear ranker, no monitors."""
    again = {block["type"] for block in features.values()}
    defaults = {
        name: block for name, block in EndcapConfig().model_dump()["features"].items() if block["type"] not in again
    }
    return EndcapConfig.model_validate(
        {
            "candidates": {"popularity": {"type": "popularity"}, "repurchase": {"type": "repurchase"}},
            "features": {**defaults, **features},
            "ranker": {"type": "linear"},
            "monitors": {},
            "serving": {"similar_items_source": "popularity"},
        }
    )


def feature_workspace(
    root: Path, log: pd.DataFrame, host: PluginHost, write_data: DataWriter | None, whole_log: pd.DataFrame
) -> Workspace:
    """A workspace under ``root`` with ``log`` ingested and features built by ``host``'s plugins,
    after ``write_data`` wrote their data files for ``whole_log``."""
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features

    root.mkdir(parents=True, exist_ok=True)
    log.to_csv(root / "log.csv", index=False)
    workspace = Workspace.resolve(root / "ws")
    ingest(root / "log.csv", workspace)
    workspace.features.mkdir(parents=True, exist_ok=True)
    if write_data is not None:
        write_data(workspace.features, whole_log)  # the same data both ways
    build_features(workspace, load_interactions(workspace), host, feature_store=host.config.feature_store)
    return workspace


def parity_rows(
    host: PluginHost,
    root: Path,
    user_ids: Sequence[str],
    log: pd.DataFrame | None = None,
    write_data: DataWriter | None = None,
) -> list[ParityRows]:
    """For each of ``user_ids``: the training examples' rows and a server's rows, both sorted.

    :param host: the plugin host (with the plugins under test) and configuration to train.
    :param log: a log whose shoppers all shop on the same days (default :func:`same_day_log`).
    :param write_data: writes the plugins' Feast data for a log before features are built.
    """
    from endcap.data.ingest import load_interactions
    from endcap.data.training_data import build_training_data
    from endcap.features.store import OnlineFeatures
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline
    from endcap.training.fit import train
    from endcap.training.ranking_examples import build_ranking_examples
    from endcap.types import Query

    log = same_day_log() if log is None else log
    full = feature_workspace(root / "full", log, host, write_data, log)
    lines = load_interactions(full)
    examples = build_ranking_examples(full, host, host.config, build_training_data(lines))

    times = pd.to_datetime(log["timestamp"], utc=True)
    last_day = pd.DatetimeIndex(times).floor("D").max()
    history = log[times < last_day]
    label_start = times[times >= last_day].groupby(log["user_id"][times >= last_day]).min()
    served = feature_workspace(root / "history", history, host, write_data, log)
    train(served, host)
    online = OnlineFeatures(served, host.config.feature_store)
    model = load_serving_model(served, host, online)
    pipeline = Pipeline(model, online.user, host.config.serving, budgets=False)

    ends = np.cumsum(examples.groups)
    found = []
    for user_id in user_ids:
        row = examples.user_ids.index(user_id)
        offline = examples.values[ends[row] - examples.groups[row] : ends[row]]
        as_of = label_start[user_id].timestamp()  # the moment the examples describe
        query = Query(user_id, model.user_index[user_id], host.config.serving.default_k, as_of=as_of)
        features = pipeline.prepare(query, model.user_features(online.user(user_id)), errors={}).features
        if features.names != examples.names:
            raise AssertionError(f"served columns {features.names} differ from trained ones {examples.names}")
        found.append(ParityRows(user_id, examples.names, _sorted_rows(offline), _sorted_rows(features.values)))
    return found


def _sorted_rows(values: np.ndarray) -> np.ndarray:
    return values[np.lexsort(values.T[::-1])] if len(values) else values
