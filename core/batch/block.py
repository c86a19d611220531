"""The batch engine: a block of users answered together, exactly as the request pipeline answers
each of them.

Every candidate source proposes for the whole block (:meth:`CandidateGenerator.generate_block`),
the proposals are merged for all users in one sort of ``user × catalogue`` keys, the exclusions
applied with one membership test, every feature provider writes its columns for all the block's
candidates (:meth:`FeatureProvider.compute_block`), the ranker scores them in one call
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
from endcap.serving.pipeline import Pipeline, scaled_per_source
from endcap.types import EMPTY_INDEX, CandidateBlock, Candidates, IndexArray, UserBlock, run_offsets

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


class MalformedBlock(ValueError):
    """A component's block answer that the request pipeline would have dropped for a request."""


def answer_block(pipeline: Pipeline, user_ids: Sequence[str], k: int) -> BlockAnswers:
    """The pipeline's top-``k`` for ``user_ids``, the same items, order and scores as
    :meth:`Pipeline.recommend` gives for each."""
    queries = tuple(pipeline.make_query(user_id, k) for user_id in user_ids)
    block = UserBlock(queries, tuple(pipeline.users(user_id) for user_id in user_ids))
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


def _checked(name: str, result: object, users: int, n_items: int) -> CandidateBlock:
    if not isinstance(result, CandidateBlock):
        raise MalformedBlock(f"{name}.generate_block returned {type(result).__name__}, expected CandidateBlock")
    if result.offsets.size != users + 1:
        raise MalformedBlock(f"{name}.generate_block answered {result.offsets.size - 1} users of {users}")
    if result.ids.size and (result.ids.min() < 0 or result.ids.max() >= n_items):
        raise MalformedBlock(f"{name}.generate_block returned item indices outside 0..{n_items - 1}")
    return result


def _proposals(pipeline: Pipeline, block: UserBlock, wanted: npt.NDArray[np.int64]) -> list[CandidateBlock]:
    """Every source's candidates for the block (a skipped source proposes nothing)."""
    nobody = CandidateBlock.join([Candidates.empty()] * len(block))
    n_items = pipeline.model.catalog.n_items
    return [
        nobody
        if name in pipeline.skip_sources
        else _checked(name, source.generate_block(block, wanted), len(block), n_items)
        for name, source in pipeline.sources
    ]


def _merged(proposals: list[CandidateBlock], n_items: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Unique ``user row × n_items + item`` keys (ascending: by user, then item) and their
    ``candidates × sources`` matrix of scores scaled per user and source, as
    :meth:`Pipeline._merge` builds it for one user."""
    keys, scaled, columns = [], [], []
    for column, proposed in enumerate(proposals):
        if not proposed.ids.size:
            continue
        lengths = proposed.lengths
        rows = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        keys.append(rows * n_items + proposed.ids)
        scaled.append(scaled_per_source(proposed.scores, lengths.tolist()))
        columns.append(np.full(proposed.ids.size, column, dtype=np.int64))
    if not keys:
        return np.empty(0, np.int64), np.zeros((0, len(proposals)), np.float32)
    every_key = np.concatenate(keys)
    order = np.argsort(every_key, kind="stable")  # a radix sort: a few ms for a block
    ordered = every_key[order]
    first = np.empty(ordered.size, dtype=bool)
    first[0], first[1:] = True, ordered[1:] != ordered[:-1]
    position = np.empty(ordered.size, dtype=np.int64)
    position[order] = np.cumsum(first) - 1
    matrix = np.zeros((int(first.sum()), len(proposals)), dtype=np.float32)
    matrix[position, np.concatenate(columns)] = np.concatenate(scaled)
    return ordered[first], matrix


def _excluded(pipeline: Pipeline, block: UserBlock, purchased: list[IndexArray], n_items: int) -> npt.NDArray[np.int64]:
    """The keys of what each user's answer must leave out: the caller's exclusions and, when the
    model excludes them, the user's purchases."""
    parts = [
        row * n_items + np.concatenate((query.exclude, bought)).astype(np.int64)
        for row, (query, bought) in enumerate(zip(block.queries, purchased, strict=True))
        if query.exclude.size or bought.size
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _rank_block(pipeline: Pipeline, block: UserBlock, k: int) -> _Ranked:
    n_items = pipeline.model.catalog.n_items
    per_source = max(pipeline.serving.candidates_per_source, k)
    purchased = [user.items if pipeline.exclude_purchased else EMPTY_INDEX for user in block.users]
    wanted = np.array(
        [per_source + q.exclude.size + p.size for q, p in zip(block.queries, purchased, strict=True)], dtype=np.int64
    )
    keys, source_scores = _merged(_proposals(pipeline, block, wanted), n_items)
    rows = keys // n_items
    proposed = np.bincount(rows, minlength=len(block)) > 0
    answered = proposed & np.fromiter((user.known for user in block.users), dtype=bool, count=len(block))

    keep = answered[rows]
    if pipeline.rules:
        keep &= _kept_by_rules(pipeline, block, keys, purchased, n_items)
    else:
        excluded = _excluded(pipeline, block, purchased, n_items)
        if excluded.size:
            keep &= ~np.isin(keys, excluded)
    keys, source_scores, rows = keys[keep], source_scores[keep], rows[keep]
    answered &= np.bincount(rows, minlength=len(block)) > 0  # all excluded: the fallback source serves
    keep = answered[rows]
    keys, source_scores, rows = keys[keep], source_scores[keep], rows[keep]

    ids = (keys - rows * n_items).astype(np.int32)
    offsets = run_offsets(np.bincount(rows, minlength=len(block)).astype(np.int64))
    features = pipeline.layout.block_matrix(block, ids, offsets, source_scores)
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
    return _Ranked(rows[best], ids[best], scores[best], answered)


def _kept_by_rules(
    pipeline: Pipeline, block: UserBlock, keys: npt.NDArray[np.int64], purchased: list[IndexArray], n_items: int
) -> npt.NDArray[np.bool_]:
    """:meth:`BusinessRules.keep` for each user's candidates (filters answer one query at a time)."""
    rows = keys // n_items
    ids = (keys - rows * n_items).astype(np.int32)
    offsets = run_offsets(np.bincount(rows, minlength=len(block)).astype(np.int64))
    keep = np.ones(keys.size, dtype=bool)
    for row, query in enumerate(block.queries):
        span = slice(int(offsets[row]), int(offsets[row + 1]))
        errors: dict[str, str] = {}
        keep[span] = pipeline.rules.keep(query, ids[span], errors, purchased[row])
        if errors:
            raise MalformedBlock(f"filters failed for {query.user_id}: {errors}")
    return keep


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
