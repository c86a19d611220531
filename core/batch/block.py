"""The batch engine: a block of users answered together, exactly as the request pipeline answers
each of them.

:func:`endcap.serving.block_prepare.prepare_block` proposes, merges, filters and writes the
features of every user's candidates at once; the ranker scores them all in one call
(:meth:`Ranker.score_block`) and one sort keyed by user, score and position gives every user's
top-k. Equal scores are ordered by position, as the request pipeline orders them.

Whatever the request pipeline treats as a special case is answered by it, one user at a time:
users without an online row or unknown to the model, users every candidate of whom was excluded
(the fallback source serves them), and the whole block when a component raises or returns
something malformed (a request isolates a failing component per request, which only the request
pipeline reproduces). Those are counted in :attr:`BlockAnswers.one_by_one` and logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import structlog
from endcap.serving.block_prepare import MalformedBlock, prepare_block
from endcap.serving.pipeline import Pipeline
from endcap.types import EMPTY_INDEX, IndexArray, UserBlock, run_offsets

log = structlog.get_logger("endcap.batch")


@dataclass(frozen=True)
class BlockAnswers:
    """Every user's top-k as flat arrays in input order: user ``j``'s items are
    ``item_ids[offsets[j]:offsets[j + 1]]``, best first."""

    item_ids: npt.NDArray[np.object_]
    scores: npt.NDArray[np.float32]
    offsets: npt.NDArray[np.int64]
    one_by_one: int
    """Users answered by the request pipeline one at a time (see the module's docstring)."""


@dataclass(frozen=True)
class _Ranked:
    """The block engine's answers: ``rows`` (user rows, ascending), catalogue ``items``, ``scores``."""

    rows: npt.NDArray[np.int64]
    items: IndexArray
    scores: npt.NDArray[np.float32]
    answered: npt.NDArray[np.bool_]
    """Rows the block engine answered; the others go one at a time."""


def answer_block(pipeline: Pipeline, user_ids: Sequence[str], k: int) -> BlockAnswers:
    """The pipeline's top-``k`` for ``user_ids``, the same items, order and scores as
    :meth:`Pipeline.recommend` gives for each."""
    queries = tuple(pipeline.make_query(user_id, k) for user_id in user_ids)
    block = UserBlock(queries, pipeline.users_of(user_ids))
    try:
        ranked = _rank_block(pipeline, block, k)
    except Exception as exc:
        log.warning("batch_block_one_by_one", users=len(block), error=f"{type(exc).__name__}: {exc}")
        ranked = _Ranked(np.empty(0, np.int64), EMPTY_INDEX, np.empty(0, np.float32), np.zeros(len(block), bool))
    item_names = pipeline.model.catalog.item_ids
    items = [item_names[ranked.items].astype(np.object_)]
    scores, rows = [ranked.scores], [ranked.rows]
    alone = np.flatnonzero(~ranked.answered)
    for row in alone.tolist():
        answer, _ = pipeline.recommend(queries[row])
        items.append(np.array(answer.item_ids, dtype=np.object_))
        scores.append(answer.scores)
        rows.append(np.full(len(answer.item_ids), row, dtype=np.int64))
    every_row = np.concatenate(rows)
    order = np.argsort(every_row, kind="stable")
    return BlockAnswers(
        item_ids=np.concatenate(items)[order],
        scores=np.concatenate(scores).astype(np.float32, copy=False)[order],
        offsets=run_offsets(np.bincount(every_row, minlength=len(block)).astype(np.int64)),
        one_by_one=int(alone.size),
    )


def _rank_block(pipeline: Pipeline, block: UserBlock, k: int) -> _Ranked:
    candidates = prepare_block(pipeline, block, k)
    features, rows, offsets = candidates.features, candidates.rows, candidates.offsets
    ids = features.ids
    ranker = pipeline.model.components.ranker
    scores = np.asarray(ranker.score_block(block, features, offsets), dtype=np.float32)
    if scores.shape != ids.shape:
        raise MalformedBlock(
            f"ranker:{ranker.name}.score_block returned {scores.shape} scores for {ids.size} candidates"
        )
    if pipeline.rules:
        scores = _boosted(pipeline, block, ids, offsets, scores)

    order = np.lexsort((-scores, rows))  # by user, best first, equal scores by position
    place = np.arange(order.size) - offsets[rows[order]]
    best = order[place < k]
    return _Ranked(rows[best], ids[best], scores[best], candidates.prepared)


def _boosted(
    pipeline: Pipeline,
    block: UserBlock,
    ids: IndexArray,
    offsets: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """The ranked scores plus the filters' boosts, one query at a time."""
    boosted = scores.copy()
    for row, query in enumerate(block.queries):
        span = slice(int(offsets[row]), int(offsets[row + 1]))
        if span.stop > span.start:
            errors: dict[str, str] = {}
            boosted[span] = pipeline.rules.boost(query, ids[span], scores[span], errors)
            if errors:
                raise MalformedBlock(f"filter boosts failed for {query.user_id}: {errors}")
    return boosted
