"""``endcap batch --engine spark``: the same batch job on Apache Spark.

The users are partitioned across executors and scored with ``mapInPandas``; each Python worker
loads the model version named in a broadcast once (from the workspace, which a cluster mounts
at the same path on every node, as replicas do) and answers its partitions through the same
serving pipeline the local engine uses, so both engines write the same recommendations. Output
is a Parquet directory partitioned by ``user_bucket``, put in place by
:func:`endcap.batch_output.publish`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from endcap.batch_output import BUCKETS, publish, user_buckets
from endcap.errors import FailedPrecondition

OUTPUT_SCHEMA = "user_id string, item_id string, rank int, score float, user_bucket int"
_PIPELINES: dict[tuple[str, str], Any] = {}
"""Loaded pipelines per (workspace, version) in this Python worker: one load per worker."""


def _pipeline(workspace_root: str, version: str) -> Any:
    key = (workspace_root, version)
    if key not in _PIPELINES:
        from endcap.config import load_config
        from endcap.feature_store import OnlineFeatures
        from endcap.pipeline import Pipeline
        from endcap.plugin_host import PluginHost
        from endcap.serving_model import load_serving_model
        from endcap.workspace import Workspace

        workspace = Workspace(Path(workspace_root))
        config = load_config(workspace.root)
        online = OnlineFeatures(workspace)
        model = load_serving_model(workspace, PluginHost(config), online, version)
        _PIPELINES[key] = Pipeline(model, online.user, config.serving, budgets=False)
    return _PIPELINES[key]


def run(workspace_root: Path, version: str, user_ids: list[str], k: int, out: Path, master: str) -> int:
    """Score ``user_ids`` with model ``version`` on Spark at ``master`` and publish to ``out``;
    returns the rows written."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this same environment
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise FailedPrecondition("--engine spark needs pyspark: pip install 'endcap[spark]'") from exc
    try:
        spark = (
            SparkSession.builder.master(master)
            .appName("endcap-batch")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", str(BUCKETS))
            .getOrCreate()
        )
    except Exception as exc:  # no Java, a bad master URL: say so instead of a JVM traceback
        raise FailedPrecondition(
            f"cannot start Spark at {master}: {type(exc).__name__}: {exc}; Spark needs Java 17 on PATH "
            "and a reachable --master (local[*] runs on this machine)"
        ) from exc
    spark.sparkContext.setLogLevel("ERROR")
    try:
        job = spark.sparkContext.broadcast({"workspace": str(workspace_root), "version": version, "k": k})

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            from endcap.batch import recommend_users

            settings = job.value
            pipeline = _pipeline(settings["workspace"], settings["version"])
            for batch in batches:
                frame = recommend_users(pipeline, batch["user_id"].tolist(), settings["k"])
                yield frame.assign(user_bucket=user_buckets(frame["user_id"]))

        users = spark.createDataFrame(pd.DataFrame({"user_id": user_ids}), schema="user_id string")
        users = users.repartition(max(1, spark.sparkContext.defaultParallelism * 2))
        result = users.mapInPandas(score, schema=OUTPUT_SCHEMA)
        rows = 0

        def write(temporary: Path) -> None:
            nonlocal rows
            result.write.partitionBy("user_bucket").parquet(str(temporary))
            rows = spark.read.parquet(str(temporary)).count()

        publish(out, write)
        return rows
    finally:
        spark.stop()
