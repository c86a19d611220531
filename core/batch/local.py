"""``endcap batch``, local engine: top-k for every user the model knows.

Users are answered in blocks by the block engine (:mod:`endcap.batch.block`: every stage for
the whole block at once, the same answers as the request pipeline), the blocks on a pool of
threads. A progress bar shows on a terminal. Output columns are ``user_id,item_id,rank,score``
(plus ``user_bucket`` in a partitioned Parquet directory); see :mod:`endcap.batch.output` for
how it is put in place.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import pandas as pd
import structlog
from endcap.batch.block import answer_block
from endcap.serving.pipeline import Pipeline

BLOCK_USERS = 512
log = structlog.get_logger("endcap.batch")


def recommend_users(pipeline: Pipeline, user_ids: Sequence[str], k: int) -> pd.DataFrame:
    """The pipeline's top-``k`` for ``user_ids``, one row per recommended item, in input order.

    Blocks of :data:`BLOCK_USERS`: a block's ALS scores are users × catalogue, so a whole Spark
    batch at once would need gigabytes."""
    users, items, scores, counts = [], [], [], []
    one_by_one = 0
    for start in range(0, len(user_ids), BLOCK_USERS):
        block = list(user_ids[start : start + BLOCK_USERS])
        answers = answer_block(pipeline, block, k)
        lengths = np.diff(answers.offsets)
        users.append(np.repeat(np.array(block, dtype=np.object_), lengths))
        items.append(answers.item_ids)
        scores.append(answers.scores)
        counts.append(lengths)
        one_by_one += answers.one_by_one
    if one_by_one:
        log.info("batch_users_one_by_one", users=one_by_one, of=len(user_ids))
    lengths = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    ranks = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
    return pd.DataFrame(
        {
            "user_id": np.concatenate(users) if users else np.empty(0, np.object_),
            "item_id": np.concatenate(items) if items else np.empty(0, np.object_),
            "rank": ranks.astype(np.int32),
            "score": np.concatenate(scores).astype(np.float32) if scores else np.empty(0, np.float32),
        }
    )


def recommend_all(
    pipeline: Pipeline, k: int, threads: int = 1, processes: int = 1, progress: bool | None = None
) -> pd.DataFrame:
    """Every known user, in catalogue order, on ``processes`` processes of ``threads`` threads.
    ``progress``: ``None`` shows a bar on a terminal only.

    Several processes are forked from this one once the model is loaded, so they share its
    memory (the large arrays are never written) and none waits for another's GIL; where ``fork``
    is not available the blocks are answered here."""
    from tqdm import tqdm

    users = pipeline.model.catalog.user_ids.tolist()
    blocks = [users[i : i + BLOCK_USERS] for i in range(0, len(users), BLOCK_USERS)]
    bar = tqdm(total=len(users), unit="user", desc="batch", disable=None if progress is None else not progress)
    threads = max(1, threads)
    tasks = [blocks[i : i + threads] for i in range(0, len(blocks), threads)]
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        log.warning("batch_processes_unavailable", processes=processes, reason="this platform cannot fork")
        processes = 1
    frames: list[pd.DataFrame] = []
    global _forked
    _forked = (pipeline, k)
    try:
        with bar, ExitStack() as stack:
            answers: Iterator[list[pd.DataFrame]]
            if processes > 1:
                answers = stack.enter_context(multiprocessing.get_context("fork").Pool(processes)).imap(
                    _answer_task, tasks
                )
            else:
                answers = map(_answer_task, tasks)
            for task, answered in zip(tasks, answers, strict=True):
                frames.extend(answered)
                bar.update(sum(len(block) for block in task))
    finally:
        _forked = None
    if not frames:
        return recommend_users(pipeline, [], k)
    return pd.concat(frames, ignore_index=True)


_forked: tuple[Pipeline, int] | None = None
"""The pipeline and ``k`` of the running :func:`recommend_all`, which forked workers inherit."""


def _answer_task(blocks: list[list[str]]) -> list[pd.DataFrame]:
    """A task's blocks, each on its own thread."""
    assert _forked is not None, "recommend_all sets the pipeline before handing out tasks"
    pipeline, k = _forked
    if len(blocks) == 1:
        return [recommend_users(pipeline, blocks[0], k)]
    with ThreadPoolExecutor(max_workers=len(blocks), thread_name_prefix="endcap-batch") as pool:
        return list(pool.map(lambda block: recommend_users(pipeline, block, k), blocks))
