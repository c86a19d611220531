"""Every stage before ranking for a block of users at once: what :meth:`Pipeline.prepare` does
for one request, done with array operations over the whole block. The batch engine
(:mod:`endcap.batch.block`) ranks what this prepares, and the learned ranker's training examples
(:mod:`endcap.training.ranking_examples`) are built from it.

Every candidate source proposes for the whole block (:meth:`CandidateGenerator.generate_block`),
the proposals are merged for all users in one sort of ``user × catalogue`` keys, the exclusions
applied with one membership test and every feature provider writes its columns for all the
block's candidates (:meth:`FeatureProvider.compute_block`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from endcap.serving.pipeline import Pipeline, scaled_per_source
from endcap.types import CandidateBlock, Candidates, FeatureMatrix, IndexArray, UserBlock, run_offsets


class MalformedBlock(ValueError):
    """A component's block answer that the request pipeline would have dropped for a request."""


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


def _excluded(block: UserBlock, purchased: list[IndexArray], n_items: int) -> npt.NDArray[np.int64]:
    """The keys of what each user's answer must leave out: the caller's exclusions and, when the
    model excludes them, the user's purchases."""
    parts = [
        row * n_items + np.concatenate((query.exclude, bought)).astype(np.int64)
        for row, (query, bought) in enumerate(zip(block.queries, purchased, strict=True))
        if query.exclude.size or bought.size
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@dataclass(frozen=True)
class PreparedBlock:
    """A block's candidates and their features, ready to rank (:meth:`Pipeline.prepare` for
    every row at once). Candidates are ordered by row, then by item index."""

    features: FeatureMatrix
    rows: npt.NDArray[np.int64]
    """The block row of each candidate."""
    offsets: npt.NDArray[np.int64]
    """Row ``j``'s candidates are ``offsets[j]:offsets[j + 1]``."""
    prepared: npt.NDArray[np.bool_]
    """Rows prepared here; the others (no online row, or everything proposed was excluded, so
    the fallback source serves) take :meth:`Pipeline.prepare` one at a time."""


def prepare_block(pipeline: Pipeline, block: UserBlock, k: int) -> PreparedBlock:
    """Candidates → merge → exclusions and filters → features for every row of ``block``."""
    n_items = pipeline.model.catalog.n_items
    asked = [pipeline.asked(query, user) for query, user in zip(block.queries, block.users, strict=True)]
    purchased = [bought for bought, _ in asked]
    wanted = np.array([n for _, n in asked], dtype=np.int64)
    keys, source_scores = _merged(_proposals(pipeline, block, wanted), n_items)
    rows = keys // n_items
    known = np.fromiter((user.known for user in block.users), dtype=bool, count=len(block))

    keep = known[rows]
    if pipeline.rules:
        keep &= _kept_by_rules(pipeline, block, keys, purchased, n_items)
    else:
        excluded = _excluded(block, purchased, n_items)
        if excluded.size:
            keep &= ~np.isin(keys, excluded)
    # a known user with nothing left (nothing proposed, or all of it excluded): the fallback source serves
    prepared = known & (np.bincount(rows[keep], minlength=len(block)) > 0)
    keys, source_scores, rows = keys[keep], source_scores[keep], rows[keep]

    ids = (keys - rows * n_items).astype(np.int32)
    offsets = run_offsets(np.bincount(rows, minlength=len(block)).astype(np.int64))
    features = pipeline.layout.block_matrix(block, ids, offsets, source_scores)
    return PreparedBlock(features, rows, offsets, prepared)


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
