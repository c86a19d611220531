"""``endcap batch --engine spark``: the same batch job on Apache Spark.

The model version's artifacts (catalogue, ALS factors, similarity matrices, ranker) are
broadcast when they are smaller than ``ENDCAP_SPARK_BROADCAST_MB`` (default 512); each Python
worker unpacks them once into a local directory, checks them against the manifest's checksums
and loads them, so executors need no access to the model registry, only to the workspace's
configuration and feature store (``endcap.yaml`` and the Feast registry at the same path on every
node, the Redis online store in production). A larger version (a million users' is gigabytes,
more than a driver's default heap can broadcast) is read by each worker from the workspace's
model registry, which must then be at the same path on every node too. Users are partitioned
across executors in the local engine's blocks and scored with ``mapInPandas`` through the same
serving pipeline the local engine uses, so both engines write the same recommendations, each
block's products rounded alike. Output is a Parquet directory
partitioned by ``user_bucket``, put in place by :func:`endcap.batch.output.publish`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pandas as pd
from endcap.batch.local import BLOCK_USERS
from endcap.batch.output import BUCKETS, publish, user_buckets
from endcap.errors import FailedPrecondition

if TYPE_CHECKING:
    from endcap.serving.pipeline import Pipeline

OUTPUT_SCHEMA = "user_id string, item_id string, rank int, score float, user_bucket int"
_PIPELINES: dict[tuple[str, str], Pipeline] = {}
"""Loaded pipelines per (workspace, version) in this Python worker: one load per worker."""


BROADCAST_MB_ENV = "ENDCAP_SPARK_BROADCAST_MB"
"""Model versions up to this many MiB are broadcast to the workers (default 512)."""


class _JobSettings(TypedDict):
    """What every worker needs besides the model files."""

    workspace: str
    version: str
    k: int


def pack_version(directory: Path) -> dict[str, bytes]:
    """Every file of a model version (manifest included), by path relative to ``directory``."""
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


def unpack_version(files: Mapping[str, bytes], version: str, root: Path) -> Path:
    """Write a packed version under ``root/version`` (a registry of one version) and return ``root``."""
    for name, content in files.items():
        target = root / version / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root


def _pipeline(workspace_root: str, version: str, files: Callable[[], Mapping[str, bytes] | None]) -> Pipeline:
    """This worker's pipeline for ``version``; the first call unpacks ``files()`` (the broadcast),
    or, when nothing was broadcast, loads the version from the workspace's registry."""
    key = (workspace_root, version)
    if key not in _PIPELINES:
        from endcap.config import load_config
        from endcap.features.store import OnlineFeatures
        from endcap.model_versions import ModelRegistry
        from endcap.plugin_host import PluginHost
        from endcap.serving.model import load_serving_model
        from endcap.serving.pipeline import Pipeline
        from endcap.workspace import Workspace

        workspace = Workspace(Path(workspace_root))
        config = load_config(workspace.root)
        online = OnlineFeatures(workspace, config.feature_store)
        packed = files()
        if packed is None:
            model = load_serving_model(workspace, PluginHost(config), online, version)
        else:
            with tempfile.TemporaryDirectory(prefix="endcap-model-") as local:  # loaded into memory, then removed
                registry = ModelRegistry(unpack_version(packed, version, Path(local)))
                model = load_serving_model(workspace, PluginHost(config), online, version, registry=registry)
        _PIPELINES[key] = Pipeline(model, online.user, config.serving, budgets=False, read_users=online.users)
    return _PIPELINES[key]


def run(workspace_root: Path, version_dir: Path, user_ids: list[str], k: int, out: Path, master: str) -> int:
    """Score ``user_ids`` with the model version in ``version_dir`` on Spark at ``master`` and
    publish to ``out``; returns the rows written."""
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
        job_settings: _JobSettings = {"workspace": str(workspace_root), "version": version_dir.name, "k": k}
        job = spark.sparkContext.broadcast(job_settings)
        size = sum(path.stat().st_size for path in version_dir.rglob("*") if path.is_file())
        small = size <= float(os.environ.get(BROADCAST_MB_ENV, "512")) * 2**20
        model = spark.sparkContext.broadcast(pack_version(version_dir) if small else None)

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            from endcap.batch.local import recommend_users

            settings = job.value
            pipeline = _pipeline(settings["workspace"], settings["version"], lambda: model.value)
            for batch in batches:
                for block in batch["user_ids"]:
                    frame = recommend_users(pipeline, list(block), settings["k"])
                    yield frame.assign(user_bucket=user_buckets(frame["user_id"]))

        # one row per block of the local engine's: each block's users are answered together on
        # either engine, so a product over the block rounds the same way on both
        blocks = [user_ids[start : start + BLOCK_USERS] for start in range(0, len(user_ids), BLOCK_USERS)]
        users = spark.createDataFrame(pd.DataFrame({"user_ids": blocks}), schema="user_ids array<string>")
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
