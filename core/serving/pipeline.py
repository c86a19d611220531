"""The request pipeline: user features → candidates → merge → filters → features → rank → top-k.

Every stage works on numpy arrays over all candidates at once; the only Python loops run over
sources, filters and the ``k`` returned items. Each component is isolated: one that raises is
dropped from this request (logged and reported to monitors), and the request is still served.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

import numpy as np
from endcap.config import ServingConfig
from endcap.errors import DeadlineExceeded
from endcap.logs import deadline_var, new_request_id
from endcap.monitoring.rate_limited import RateLimitedCount
from endcap.serving.business_rules import BusinessRules
from endcap.serving.component_calls import ComponentCalls
from endcap.serving.model import ServingModel
from endcap.serving.ranking_layout import RankingLayout
from endcap.serving.requests import RequestValidator, resolve_k
from endcap.serving.stopwatch import Stopwatch, trace_request, tracer
from endcap.types import (
    EMPTY_INDEX,
    CandidateGenerator,
    Candidates,
    FeatureMatrix,
    IndexArray,
    Query,
    RequestRecord,
    StageTimings,
    UserFeatures,
    read_only,
)

__all__ = ["Pipeline", "Prepared", "Recommendation", "resolve_k"]


@dataclass(frozen=True)
class Recommendation:
    """A pipeline answer: item ids best first, their scores and the sources that proposed each."""

    request_id: str
    model_version: str
    variant: str
    item_ids: tuple[str, ...]
    scores: np.ndarray
    sources: tuple[tuple[str, ...], ...]
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A request's candidates, ready to rank."""

    features: FeatureMatrix
    source_scores: np.ndarray
    """``candidates × sources`` scores scaled to (0, 1]; 0 where a source did not propose the item."""
    counts: Mapping[str, int]
    """Candidates each source returned, before merging and filtering."""
    fallback: bool = False
    """Every source came back empty and the fallback source served."""


def scaled_per_source(scores: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Each source's scores (consecutive runs of ``sizes``) mapped to (0, 1]: its best is 1, its
    worst just above 0; a source whose scores are all equal gets 1 throughout."""
    scores = scores.astype(np.float32, copy=False)
    present = [size for size in sizes if size]
    starts = list(accumulate(present[:-1], initial=0))
    low = np.minimum.reduceat(scores, starts)
    span = np.maximum.reduceat(scores, starts) - low
    flat = span <= 0
    any_flat = bool(flat.any())
    if any_flat:
        span[flat] = 1.0
    scaled: np.ndarray = 0.05 + 0.95 * (scores - np.repeat(low, present)) / np.repeat(span, present)
    if any_flat:
        scaled[np.repeat(flat, present)] = 1.0
    return scaled.astype(np.float32, copy=False)


def _candidates(name: str, result: object) -> Candidates:
    if not isinstance(result, Candidates):
        raise TypeError(f"{name}.generate returned {type(result).__name__}, expected Candidates")
    return result


def _check_deadline(stage: str) -> None:
    """Stop working for a caller who has stopped waiting (the deadline of the gRPC call)."""
    deadline = deadline_var.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"the call's deadline passed after {stage}; nothing was returned")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, best first; equal scores by position, NaN last (the
    batch engine's segmented top-k orders them the same way)."""
    negated = -scores
    if scores.size > k:
        bound = np.partition(negated, k - 1)[k - 1]
        if not np.isnan(bound):  # every score at or above the k-th best; ties may add a few
            kept = np.flatnonzero(negated <= bound)
            return kept[np.argsort(negated[kept], kind="stable")[:k]]
    return np.argsort(negated, kind="stable")[:k]


class Pipeline:
    """Answers Recommend for one loaded model version (SimilarItems: :mod:`endcap.serving.similar_items`)."""

    def __init__(
        self,
        model: ServingModel,
        read_user: Callable[[str], dict[str, Any]],
        serving: ServingConfig,
        skip_sources: frozenset[str] = frozenset(),
        budgets: bool = True,
        users: Callable[[str], UserFeatures] | None = None,
        read_users: Callable[[Sequence[str]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.model = model
        self.users = users or (lambda user_id: model.user_features(read_user(user_id)))
        """``user_id → UserFeatures`` for a request: the server's memo of parsed rows (see
        :mod:`endcap.serving.user_memo`), else ``read_user`` and a parse every time."""
        self._read_users = read_users if users is None else None
        """Many users' rows in one read (batch jobs: :meth:`OnlineFeatures.users`)."""
        self.serving = serving
        self.requests = RequestValidator(serving)
        self.tracer = tracer() if serving.opentelemetry else None
        self.sources: tuple[tuple[str, CandidateGenerator], ...] = tuple(model.components.candidates.items())
        self.skip_sources = skip_sources
        """Sources this pipeline does not call (an experiment arm without them); their feature
        columns stay, at zero, so every arm shares one feature layout."""
        self.calls = ComponentCalls(budgets)
        """Every component call, isolated; ``budgets`` on for serving, off for batch jobs."""
        self.rules = BusinessRules(model.components.filters, self.calls)
        self.exclude_purchased = model.manifest.exclude_purchased
        """Leave what the user already bought out of their answers (decided at training from the
        log's repeat share; see :mod:`endcap.features.repeat_purchases`)."""
        self.online_misses = RateLimitedCount("online_feature_miss", "users the model knows had no online row")
        """Requests for users the model knows that the online store holds no row for."""
        self.source_names = tuple(name for name, _ in self.sources)
        self.layout = RankingLayout(self.source_names, model.components.features, model.provider_products)
        self._source_columns = np.arange(len(self.source_names))
        self._source_bits = 1 << np.arange(len(self.source_names), dtype=np.int64)
        self._positions = np.arange(model.catalog.n_items, dtype=np.int32)
        self._slots = threading.local()
        self._source_sets: dict[int, tuple[str, ...]] = {}
        """Source names by bit set, filled as sets occur: the sources behind an item are looked
        up, not rebuilt per item."""

    def users_of(self, user_ids: Sequence[str]) -> tuple[UserFeatures, ...]:
        """:attr:`users` of each of ``user_ids``, read together when the pipeline was given
        ``read_users``."""
        if self._read_users is None:
            return tuple(self.users(user_id) for user_id in user_ids)
        return tuple(self.model.user_features(row) for row in self._read_users(user_ids))

    @property
    def budgets(self) -> bool:
        """Whether a component that overruns its ``budget_ms`` is dropped (see :class:`ComponentCalls`)."""
        return self.calls.budgets

    @property
    def failures(self) -> Counter[str]:
        """Calls dropped per component (raised or overran its budget) since start."""
        return self.calls.failures

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The ranking feature layout's column names (see :mod:`endcap.serving.ranking_layout`)."""
        return self.layout.names

    # -- validation ------------------------------------------------------------------------

    def resolve_k(self, k: int) -> int:
        """See :func:`endcap.serving.requests.resolve_k`."""
        return self.requests.k(k)

    def make_query(
        self,
        user_id: str,
        k: int,
        exclude_item_ids: Sequence[str] = (),
        context: Mapping[str, str] | None = None,
        variant: str = "",
        as_of: float = math.nan,
    ) -> Query:
        """The query for this pipeline's model (see :meth:`RequestValidator.query`)."""
        return self.requests.query(self.model, user_id, k, exclude_item_ids, context, variant, as_of)

    # -- Recommend ---------------------------------------------------------------------------

    def asked(self, query: Query, user: UserFeatures) -> tuple[IndexArray, int]:
        """What the answer leaves out of the user's own purchases (sorted; none unless the model
        excludes them), and how many candidates each source is asked for: enough for ``k``
        after the caller's exclusions and those purchases."""
        purchased = user.items if self.exclude_purchased else EMPTY_INDEX
        wanted = max(self.serving.candidates_per_source, query.k) + int(query.exclude.size) + int(purchased.size)
        return purchased, wanted

    def prepare(
        self, query: Query, user: UserFeatures, errors: dict[str, str], watch: Stopwatch | None = None
    ) -> Prepared:
        """Candidates → merge → filters → features: everything before ranking.

        Serving and training both go through here, so the ranker learns from exactly the
        feature layout it is served with.
        """
        watch = watch or Stopwatch()
        purchased, wanted = self.asked(query, user)
        results = self._generate(query, user, wanted, errors)
        fallback = not any(len(c) for c in results)
        if fallback:
            results = self._fallback(query, user, wanted, errors)
        watch.lap("candidates")

        ids, source_scores = self._merge(results)
        watch.lap("merge")

        ids, source_scores = self._kept(query, ids, source_scores, errors, purchased)
        if not ids.size and not fallback:  # everything proposed was excluded: bought, in the cart, filtered
            fallback = True
            results = self._fallback(query, user, wanted, errors)
            ids, source_scores = self._kept(query, *self._merge(results), errors, purchased)
        watch.lap("filter")

        features = self.layout.matrix(query, ids, source_scores, user, self.calls, errors)
        watch.lap("features")
        counts = {name: len(c) for name, c in zip(self.source_names, results, strict=True)}
        return Prepared(features=features, source_scores=source_scores, counts=counts, fallback=fallback)

    def recommend(self, query: Query, request_id: str | None = None) -> tuple[Recommendation, RequestRecord]:
        request_id = request_id or new_request_id()
        watch = Stopwatch()
        _check_deadline("starting")
        user = self.users(query.user_id)
        online_miss = not user.known and query.user_index >= 0
        if online_miss:  # not a stranger: the model knows them though the store has no row
            user = self.model.history_features(query.user_index)
            self.online_misses.add()
        watch.lap("user_features")

        errors: dict[str, str] = {}
        prepared = self.prepare(query, user, errors, watch)
        ids, source_scores = prepared.features.ids, prepared.source_scores
        _check_deadline("candidates and features")

        if user.known:
            scores = self.rank(query, prepared.features, source_scores, errors)
        else:  # cold start: nothing personal to rank on, keep the sources' own order
            scores = source_scores.sum(axis=1)
        if self.rules and ids.size:
            scores = self.rules.boost(query, ids, scores, errors)
        watch.lap("rank")

        best = _top_k(scores, query.k)
        item_ids = tuple(self.model.catalog.item_ids[ids[best]].tolist())
        sources = self._proposers(source_scores[best])
        top_scores = scores[best].astype(np.float32)
        watch.lap("top_k")

        timings = watch.ms
        answer = Recommendation(
            request_id=request_id,
            model_version=self.model.version,
            variant=query.variant,
            item_ids=item_ids,
            scores=top_scores,
            sources=sources,
            timings=timings,
        )
        top_scores.flags.writeable = False
        if self.tracer is not None:
            trace_request(self.tracer, watch, request_id, query, self.model.version)
        record = self._record(answer, query, prepared, errors, scores, user.known, online_miss)
        return answer, record

    def _record(
        self,
        answer: Recommendation,
        query: Query,
        prepared: Prepared,
        errors: dict[str, str],
        scores: np.ndarray,
        known: bool,
        online_miss: bool,
    ) -> RequestRecord:
        """What monitors are told about one answered request."""
        return RequestRecord(
            request_id=answer.request_id,
            query=query,
            model_version=answer.model_version,
            candidates_per_source=prepared.counts,
            item_ids=answer.item_ids,
            scores=answer.scores,
            item_sources=answer.sources,
            timings=StageTimings(dict(answer.timings)),
            errors=dict(errors),
            cold_start=not known and not online_miss,
            online_miss=online_miss,
            fallback=prepared.fallback,
            features=prepared.features,
            candidate_scores=read_only(scores.astype(np.float32, copy=False)),
        )

    def _generate(self, query: Query, user: UserFeatures, n: int, errors: dict[str, str]) -> list[Candidates]:
        results = []
        for name, generator in self.sources:
            if name in self.skip_sources:
                results.append(Candidates.empty())
                continue

            def call(generator: CandidateGenerator = generator, name: str = name) -> Candidates:
                return _candidates(name, generator.generate(query, user, n))

            result = self.calls.run(name, generator, errors, call)
            results.append(result if result is not None else Candidates.empty())
        return self._in_catalog(results, self.source_names, errors)

    def _in_catalog(self, results: list[Candidates], names: Sequence[str], errors: dict[str, str]) -> list[Candidates]:
        """``results`` with every source that proposed an index outside the catalogue dropped
        (counted and logged like a source that raised): one check over all of them."""
        if not any(len(c) for c in results):
            return results
        everything = np.concatenate([c.ids for c in results])
        last = self.model.catalog.n_items - 1
        if everything.min() >= 0 and everything.max() <= last:
            return results
        checked = []
        for name, result in zip(names, results, strict=True):
            if len(result) and (result.ids.min() < 0 or result.ids.max() > last):
                self.calls.drop(name, errors, f"ValueError: {name}.generate returned item indices outside 0..{last}")
                result = Candidates.empty()
            checked.append(result)
        return checked

    def _proposers(self, source_scores: np.ndarray) -> tuple[tuple[str, ...], ...]:
        """For each row of ``source_scores``, the names of the sources that proposed the item."""
        codes = ((source_scores > 0) @ self._source_bits).tolist()
        known = self._source_sets
        return tuple(known[code] if code in known else self._source_set(code) for code in codes)

    def _source_set(self, code: int) -> tuple[str, ...]:
        names = tuple(name for bit, name in enumerate(self.source_names) if code >> bit & 1)
        self._source_sets[code] = names
        return names

    def _fallback(self, query: Query, user: UserFeatures, n: int, errors: dict[str, str]) -> list[Candidates]:
        name = self.serving.fallback_source
        generator = self.model.components.candidates.get(name)
        if generator is None:
            return [Candidates.empty() for _ in self.sources]
        cold = replace(query, user_index=-1)
        key = f"{name} (fallback)"

        def call() -> Candidates:
            return _candidates(name, generator.generate(cold, UserFeatures(stats={}), n))

        result = self.calls.run(key, generator, errors, call) or Candidates.empty()
        [fallback] = self._in_catalog([result], [key], errors)
        return [fallback if source == name else Candidates.empty() for source in self.source_names]

    def _merge(self, results: list[Candidates]) -> tuple[IndexArray, np.ndarray]:
        """Unique candidate ids (ascending) and a ``candidates × sources`` matrix of each source's
        scores scaled to (0, 1] (0 = absent): one pass over all sources' arrays together. A
        source that repeats an item keeps one of its scores for it."""
        sizes = [len(c) for c in results]
        if not any(sizes):
            return np.empty(0, dtype=np.int32), np.zeros((0, len(results)), dtype=np.float32)
        ids = np.concatenate([c.ids for c in results])
        scaled = scaled_per_source(np.concatenate([c.scores for c in results]), sizes)
        unique = np.sort(ids)
        unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
        matrix = np.zeros((unique.size, len(results)), dtype=np.float32)
        matrix[self._rows_of(ids, unique), np.repeat(self._source_columns, sizes)] = scaled
        return unique.astype(np.int32, copy=False), matrix

    def _rows_of(self, ids: IndexArray, rows: IndexArray) -> np.ndarray:
        """Each of ``ids``' position in ``rows`` (unique catalogue indices, every id among them).

        A table over the catalogue, one per thread, answers with one write and one read, where a
        binary search costs a mispredicted branch per step. Every entry read was written just
        before, so the table is never cleared."""
        table = getattr(self._slots, "table", None)
        if table is None:
            table = self._slots.table = np.zeros(self.model.catalog.n_items, dtype=np.int32)
        table[rows] = self._positions[: rows.size]
        return table[ids]

    def _kept(
        self, query: Query, ids: IndexArray, source_scores: np.ndarray, errors: dict[str, str], purchased: IndexArray
    ) -> tuple[IndexArray, np.ndarray]:
        """The candidates (and their rows of source scores) that :meth:`BusinessRules.keep` keeps."""
        keep = self.rules.keep(query, ids, errors, purchased)
        return (ids, source_scores) if keep.all() else (ids[keep], source_scores[keep])

    def rank(
        self, query: Query, features: FeatureMatrix, source_scores: np.ndarray, errors: dict[str, str]
    ) -> np.ndarray:
        """The ranker's scores; the sources' own when it fails or overruns its budget."""
        if features.ids.size == 0:
            return np.empty(0, dtype=np.float32)
        ranker = self.model.components.ranker

        def call() -> np.ndarray:
            scores = np.asarray(ranker.score(query, features), dtype=np.float32)
            if scores.shape != features.ids.shape:
                raise ValueError(f"returned {scores.shape} scores for {features.ids.shape[0]} candidates")
            return scores

        scores = self.calls.run(f"ranker:{ranker.name}", ranker, errors, call)
        return scores if scores is not None else source_scores.sum(axis=1)
