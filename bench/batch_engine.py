"""Batch engine benchmark on a trained workspace: the block engine against the request pipeline
called once per user, and against the floor, implicit's own batched ``recommend`` on the same
model's ALS factors, all in this one process.

    .venv/bin/python bench/batch_engine.py                    # the demo workspace (.endcap)
    .venv/bin/python bench/batch_engine.py --workspace PATH --k 10 --processes 2 --threads 1

Prints users per second for each, and where the block engine's time goes per block (one
thread): reading the users' rows, each source's ``generate_block``, merge and features, the
ranker, top-k.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=".endcap")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--threads", type=int, default=1, help="threads of each process")
    parser.add_argument("--users", type=int, default=0, help="answer only the first N users (0: all)")
    options = parser.parse_args()

    from endcap.batch.block import answer_block
    from endcap.batch.local import BLOCK_USERS, recommend_all
    from endcap.config import load_config
    from endcap.features.store import OnlineFeatures
    from endcap.plugin_host import PluginHost
    from endcap.serving.block_prepare import prepare_block
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline
    from endcap.types import UserBlock
    from endcap.workspace import Workspace

    workspace = Workspace.resolve(Path(options.workspace))
    config = load_config(workspace.root)
    online = OnlineFeatures(workspace, config.feature_store)
    model = load_serving_model(workspace, PluginHost(config), online)
    pipeline = Pipeline(model, online.user, config.serving, budgets=False, read_users=online.users)
    users = model.catalog.user_ids.tolist()[: options.users or None]
    k = options.k
    print(f"{workspace.root}: {len(users):,} users, {model.catalog.n_items:,} items, k={k}")

    answer_block(pipeline, users[:BLOCK_USERS], k)  # warm: first reads, compiled trees
    started = time.perf_counter()
    if options.users:
        for start in range(0, len(users), BLOCK_USERS):
            answer_block(pipeline, users[start : start + BLOCK_USERS], k)
    else:
        recommend_all(pipeline, k, threads=options.threads, processes=options.processes, progress=False)
    block_rate = len(users) / (time.perf_counter() - started)

    sample = users[: min(len(users), 4 * BLOCK_USERS)]
    started = time.perf_counter()
    for user_id in sample:
        pipeline.recommend(pipeline.make_query(user_id, k))
    request_rate = len(sample) / (time.perf_counter() - started)

    als = model.components.candidates.get("als")
    reference = ""
    if als is not None:
        indices = np.arange(len(users))
        started = time.perf_counter()
        for start in range(0, indices.size, 10_000):
            als.model.recommend(indices[start : start + 10_000], None, N=100, filter_already_liked_items=False)
        reference = f"{len(users) / (time.perf_counter() - started):,.0f}"

    stages: dict[str, float] = defaultdict(float)
    for start in range(0, len(sample), BLOCK_USERS):
        block_ids = sample[start : start + BLOCK_USERS]
        tick = time.perf_counter()
        queries = tuple(pipeline.make_query(user_id, k) for user_id in block_ids)
        block = UserBlock(queries, pipeline.users_of(block_ids))
        stages["user rows"] += time.perf_counter() - tick
        for name, source in pipeline.sources:
            tick = time.perf_counter()
            source.generate_block(block, np.full(len(block), max(config.serving.candidates_per_source, k)))
            stages[f"source {name}"] += time.perf_counter() - tick
        tick = time.perf_counter()
        prepared = prepare_block(pipeline, block, k)
        stages["all sources + merge + features"] += time.perf_counter() - tick
        tick = time.perf_counter()
        model.components.ranker.score_block(block, prepared.features, prepared.offsets)
        stages["ranker"] += time.perf_counter() - tick

    print("\n| engine | users/s |\n|---|---:|")
    # --users answers its blocks one after another, here
    processes, threads = (1, 1) if options.users else (options.processes, options.threads)
    print(f"| block engine, {processes} process(es) x {threads} thread(s) | {block_rate:,.0f} |")
    print(f"| request pipeline once per user, 1 thread | {request_rate:,.0f} |")
    if reference:
        print(f"| implicit ALS recommend (top 100), the floor | {reference} |")
    print(f"\nms per user in the block engine's stages ({len(sample):,} users, 1 thread):\n")
    print("| stage | ms/user |\n|---|---:|")
    for stage, seconds in stages.items():
        print(f"| {stage} | {1000 * seconds / len(sample):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
