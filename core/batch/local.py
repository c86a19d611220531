"""``endcap batch``, local engine: top-k for every user the model knows.

Users go through the serving pipeline in blocks: before a block, every candidate generator that
can answer many users at once (``prefetch``: ALS scores the whole block with one matrix product)
does so, then the block's users are answered on a pool of threads. A progress bar shows on a
terminal. Output columns are ``user_id,item_id,rank,score`` (plus ``user_bucket`` in a
partitioned Parquet directory); see :mod:`endcap.batch.output` for how it is put in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from endcap.serving.pipeline import Pipeline, Recommendation

BLOCK_USERS = 512


def recommend_users(pipeline: Pipeline, user_ids: Sequence[str], k: int) -> pd.DataFrame:
    """The pipeline's top-``k`` for ``user_ids``, one row per recommended item, in input order.

    Prefetching goes block by block: a block's scores are users × catalogue, so a whole Spark
    batch at once would need gigabytes."""
    answers: list[Recommendation] = []
    wanted = max(pipeline.serving.candidates_per_source, k)
    for start in range(0, len(user_ids), BLOCK_USERS):
        block = user_ids[start : start + BLOCK_USERS]
        indices = np.array([pipeline.model.user_index.get(u, -1) for u in block], dtype=np.int32)
        known = indices[indices >= 0]
        if known.size:
            for _, generator in pipeline.sources:
                generator.prefetch(known, wanted)
        answers.extend(pipeline.recommend(pipeline.make_query(user_id, k))[0] for user_id in block)
    counts = np.array([len(a.item_ids) for a in answers], dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.array(list(user_ids), dtype=np.object_), counts),
            "item_id": np.array([i for a in answers for i in a.item_ids], dtype=np.object_),
            "rank": np.concatenate([np.arange(1, c + 1) for c in counts]).astype(np.int32) if counts.size else [],
            "score": np.concatenate([a.scores for a in answers]).astype(np.float32) if answers else [],
        }
    )


def recommend_all(pipeline: Pipeline, k: int, threads: int = 2, progress: bool | None = None) -> pd.DataFrame:
    """Every known user, in catalogue order. ``progress``: ``None`` shows a bar on a terminal only."""
    from tqdm import tqdm

    users = pipeline.model.catalog.user_ids.tolist()
    blocks = [users[i : i + BLOCK_USERS] for i in range(0, len(users), BLOCK_USERS)]
    bar = tqdm(total=len(users), unit="user", desc="batch", disable=None if progress is None else not progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="endcap-batch") as pool:
        frames = []
        for block, frame in zip(blocks, pool.map(lambda b: recommend_users(pipeline, b, k), blocks), strict=True):
            frames.append(frame)
            bar.update(len(block))
    if not frames:
        return recommend_users(pipeline, [], k)
    return pd.concat(frames, ignore_index=True)
