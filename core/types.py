"""The typed plugin boundary: frozen dataclasses of numpy arrays and the component base classes.

Inside Endcap an item or a user is a dense ``int32`` index into the model version's catalogue;
string ids exist only at the edges (gRPC, files). Components never see protobuf messages.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

IndexArray = npt.NDArray[np.int32]
ScoreArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

EMPTY_INDEX: IndexArray = np.empty(0, dtype=np.int32)
EMPTY_SCORES: ScoreArray = np.empty(0, dtype=np.float32)
EMPTY_INDEX.flags.writeable = False
EMPTY_SCORES.flags.writeable = False


def read_only(values: np.ndarray) -> np.ndarray:
    """``values``, no longer writeable: arrays shared between requests or handed to plugins."""
    values.flags.writeable = False
    return values


class ComponentConfig(BaseModel):
    """Base of every component's config model: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    budget_ms: float = Field(50.0, gt=0)
    """Time a request may spend in this component; a call that takes longer has its result
    dropped for that request (counted and logged), as if it had failed."""


@dataclass(frozen=True)
class Catalog:
    """The id ↔ index mapping of one model version: components speak in indices, and
    ``item_ids[i]`` is the log's id of item index ``i`` (``user_ids`` likewise)."""

    user_ids: npt.NDArray[np.str_]
    """Every user's id, by user index."""
    item_ids: npt.NDArray[np.str_]
    """Every item's id, by item index."""

    @property
    def n_users(self) -> int:
        """How many users the model knows (user indices are ``0 .. n_users - 1``)."""
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        """How many items the catalogue holds (item indices are ``0 .. n_items - 1``; size arrays by it)."""
        return int(self.item_ids.shape[0])


@dataclass(frozen=True)
class Query:
    """One recommendation request, as components see it."""

    user_id: str
    user_index: int
    """Index of the user in the catalogue, or -1 for a user the model has not seen."""
    k: int
    exclude: IndexArray = field(default_factory=lambda: EMPTY_INDEX)
    """Known item indices the caller excluded (e.g. the cart)."""
    context: Mapping[str, str] = field(default_factory=dict)
    variant: str = ""
    as_of: float = math.nan
    """When the shopper is answered, in seconds since 1970 (UTC), when the caller knows it: the
    label basket's time in training examples and evaluation, a request's ``as_of``. NaN
    otherwise: a component that measures time then takes the newest time its data knows (never
    the wall clock)."""


@dataclass(frozen=True)
class UserFeatures:
    """What the feature store holds for one user, read in one online lookup."""

    stats: Mapping[str, float]
    """Scalar user statistics by feature name (0.0 when the user is unknown)."""
    items: IndexArray = field(default_factory=lambda: EMPTY_INDEX)
    """Catalogue indices of the items the user bought, sorted ascending."""
    item_stats: Mapping[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    """User×item statistics aligned with ``items`` (e.g. ``times_bought``)."""

    @property
    def known(self) -> bool:
        return bool(self.stats)


@dataclass(frozen=True)
class Candidates:
    """Items proposed by one source: parallel arrays of catalogue indices and scores."""

    ids: IndexArray
    scores: ScoreArray

    def __post_init__(self) -> None:
        if self.ids.shape != self.scores.shape:
            raise ValueError(f"ids {self.ids.shape} and scores {self.scores.shape} differ in shape")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        return cls(EMPTY_INDEX, EMPTY_SCORES)


@dataclass(frozen=True)
class UserBlock:
    """Many users answered together, by a batch job or while building training examples: row
    ``j`` is ``queries[j]`` for ``users[j]``. The block methods' per-candidate arrays hold row 0's
    candidates, then row 1's and so on, delimited by ``offsets``; ``purchases`` gives every
    row's purchase arrays flattened (:class:`BlockPurchases`), built once per block."""

    queries: tuple[Query, ...]
    users: tuple[UserFeatures, ...]

    @property
    def user_indices(self) -> IndexArray:
        """Each row's ``Query.user_index`` (-1 for a user the model has not seen)."""
        return np.fromiter((q.user_index for q in self.queries), dtype=np.int32, count=len(self.queries))

    def __len__(self) -> int:
        return len(self.queries)

    @cached_property
    def purchases(self) -> BlockPurchases:
        """Every row's :attr:`UserFeatures.items` and ``item_stats`` as flat arrays (built once
        per block, shared by the feature providers)."""
        return BlockPurchases(self.users)


class BlockPurchases:
    """The purchases of a :class:`UserBlock`'s users, keyed ``row << 32 | item`` (ascending)."""

    def __init__(self, users: Sequence[UserFeatures]) -> None:
        self._users = users
        lengths = np.fromiter((u.items.size for u in users), dtype=np.int64, count=len(users))
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        items = np.concatenate([u.items for u in users]).astype(np.int64) if lengths.sum() else np.empty(0, np.int64)
        self.keys = (rows << 32) | items
        self._stats: dict[str, npt.NDArray[np.float32]] = {}

    def stat(self, name: str) -> npt.NDArray[np.float32]:
        """``item_stats[name]`` of every purchase, aligned with :attr:`keys`."""
        if name not in self._stats:
            parts = [u.item_stats[name] for u in self._users if u.items.size]
            self._stats[name] = np.concatenate(parts).astype(np.float32, copy=False) if parts else EMPTY_SCORES
        return self._stats[name]

    def find(
        self, rows: npt.NDArray[np.int64], ids: IndexArray, at_least: int = 1
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(positions in ids, positions in the purchase arrays)`` of the candidates (row
        ``rows[i]``'s item ``ids[i]``) that row's user bought at least ``at_least`` times."""
        if not (self.keys.size and ids.size):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        wanted = (rows.astype(np.int64) << 32) | ids.astype(np.int64)
        pos = np.searchsorted(self.keys, wanted)
        pos[pos == self.keys.size] = 0
        found = np.flatnonzero(self.keys[pos] == wanted)
        if at_least > 1:
            found = found[self.stat("times_bought")[pos[found]] >= at_least]
        return found, pos[found]


def run_offsets(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Offsets of consecutive runs of ``lengths``: ``[0, l0, l0 + l1, …]``."""
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass(frozen=True)
class CandidateBlock:
    """Candidates for every row of a :class:`UserBlock`, as one pair of arrays: row ``j``'s are
    ``ids[offsets[j]:offsets[j + 1]]`` (unique, best first as ``generate`` would return them)."""

    ids: IndexArray
    scores: ScoreArray
    offsets: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.ids.shape != self.scores.shape:
            raise ValueError(f"ids {self.ids.shape} and scores {self.scores.shape} differ in shape")
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0 or self.offsets[-1] != self.ids.size:
            raise ValueError(f"offsets must run from 0 to {self.ids.size}; got {self.offsets[:1]}…{self.offsets[-1:]}")

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """How many candidates each row has."""
        return np.diff(self.offsets)

    def row(self, j: int) -> Candidates:
        """Row ``j``'s candidates."""
        start, stop = int(self.offsets[j]), int(self.offsets[j + 1])
        return Candidates(self.ids[start:stop], self.scores[start:stop])

    def first(self, n: npt.NDArray[np.int64]) -> CandidateBlock:
        """Each row cut to its first ``n[j]`` candidates."""
        lengths = np.minimum(self.lengths, np.maximum(n.astype(np.int64), 0))
        offsets = run_offsets(lengths)
        positions = np.repeat(self.offsets[:-1] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return CandidateBlock(self.ids[positions], self.scores[positions], offsets)

    @classmethod
    def join(cls, rows: Sequence[Candidates]) -> CandidateBlock:
        """One block from each row's :class:`Candidates`."""
        offsets = run_offsets(np.fromiter((len(c) for c in rows), dtype=np.int64, count=len(rows)))
        if not offsets[-1]:
            return cls(EMPTY_INDEX, EMPTY_SCORES, offsets)
        ids = np.concatenate([c.ids for c in rows]).astype(np.int32, copy=False)
        return cls(ids, np.concatenate([c.scores for c in rows]).astype(np.float32, copy=False), offsets)


@dataclass(frozen=True)
class FeatureMatrix:
    """Ranking features for the merged candidates: one row per candidate, one column per name."""

    ids: IndexArray
    names: tuple[str, ...]
    values: npt.NDArray[np.float32]

    def column(self, name: str) -> npt.NDArray[np.float32]:
        return self.values[:, self.names.index(name)]


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent in each pipeline stage of one request."""

    ms: Mapping[str, float]


@dataclass(frozen=True)
class RequestRecord:
    """What monitors see after a request was answered. Read-only by construction."""

    request_id: str
    query: Query
    model_version: str
    candidates_per_source: Mapping[str, int]
    item_ids: tuple[str, ...]
    scores: ScoreArray
    timings: StageTimings
    errors: Mapping[str, str] = field(default_factory=dict)
    """Components that failed or overran their budget for this request, and why."""
    cold_start: bool = False
    """Neither the model nor the feature store knew the user."""
    online_miss: bool = False
    """The model knows the user but the online store held no row for them: the candidates come
    from what the model knows (its own purchase matrix), ordered by the sources' scores; the
    learned ranker, which needs the row's statistics, is not called."""
    features: FeatureMatrix | None = None
    """The ranked candidates' features (read-only), for monitors that watch their distribution."""
    candidate_scores: ScoreArray | None = None
    """The final score of every ranked candidate, aligned with ``features``."""
    fallback: bool = False
    """Every candidate source came back empty and the fallback source served."""
    item_sources: tuple[tuple[str, ...], ...] = ()
    """For each of ``item_ids``, the names of the candidate sources that proposed it (as the
    response's ``sources``)."""


@dataclass(frozen=True)
class Event:
    """A shopper event accepted by ``RecordEvents``."""

    user_id: str
    item_id: str
    type: str
    """``purchase``, ``add_to_cart`` or ``view``."""
    quantity: int
    timestamp: float
    """Seconds since the epoch, UTC."""
    event_id: str = ""
    """The client's id for the event (optional): a retried call's events with ids already
    recorded are not recorded, nor counted, again."""


@dataclass(frozen=True)
class RankingExamples:
    """Learning-to-rank examples built the way serving builds a request's features.

    One query group per label basket: each user's newest basket, and with
    ``training.label_baskets`` > 1 the ones before it (all newest baskets first, then the next
    older ones). For each, the candidate generators are trained on the log without it and the
    user's newer baskets, features come from point-in-time reads of the offline store as of
    that basket, and a candidate's label is 1 when it is in that basket. Rows of one group are
    consecutive; ``groups`` holds the row count of each group in order. A user can own several
    groups: hold out by :attr:`user_ids`, not by group, to keep a user's groups together.
    """

    names: tuple[str, ...]
    values: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    groups: npt.NDArray[np.int32]
    user_ids: tuple[str, ...]
    """The user of each group, in order."""


@dataclass(frozen=True)
class EarlierFit:
    """A component's fit earlier in the same training run, on the history before the ranker's
    label baskets (the log without each user's newest basket): what stays valid on the whole log,
    such as tuned hyperparameters or factors to start from, need not be found again."""

    params: Mapping[str, Any]
    """What that ``fit`` returned."""
    directory: Path
    """What that ``fit`` wrote (removed when the training run ends)."""


@dataclass(frozen=True)
class TrainingData:
    """The ingested purchase log, as components see it at training time."""

    catalog: Catalog
    interactions: pd.DataFrame
    """Columns ``user_index``, ``item_index`` (int32), ``basket_index`` (per-user order number,
    0-based, int32), ``timestamp`` (UTC), ``quantity`` (int32), sorted by user then time; and
    ``cart_position`` (int32: 1 for the first line put in the basket, 0 where not known) when
    the log says where each line went into its basket."""
    user_items: sp.csr_matrix
    """Users × items purchase counts (float32)."""
    ranking_examples: RankingExamples | None = None
    """Set when a configured component declares ``needs_ranking_examples``."""
    reference_scores: npt.NDArray[np.float32] | None = None
    """The trained ranker's scores on ``ranking_examples`` (set for components fitted after it)."""
    asked_users: IndexArray | None = None
    """The users this training's model will be asked about, when not all of them: while the
    ranker's examples are built, only their shoppers' (a sample at scale, see
    ``training.ranking_users``). A generator that computes every user's answers at ``fit`` may
    compute only these; ``None``: any user may be asked."""
    earlier_fit: EarlierFit | None = None
    """This component's fit on the history before the label baskets, when the ranker's examples
    were built in this run (``None`` otherwise, and during that fit itself). A fit may start from
    it; the model must still be one of the whole log."""


@dataclass(frozen=True)
class ModelContext:
    """What a component receives when its trained state is loaded for serving."""

    catalog: Catalog
    user_items: sp.csr_matrix
    directory: Path
    """This component's own directory inside the model version. Read everything you need while
    loading: a Spark batch worker loads from a temporary copy that is removed afterwards."""
    product_features: Callable[[Sequence[str]], pd.DataFrame] | None = None
    """Reads product-keyed features from the online store for every catalogue item, in catalogue
    order: ``product_features(["stock:in_stock"])`` gives one column per feature. ``None`` when no
    feature store is at hand (offline evaluation)."""
    workspace: Path | None = None
    """The workspace directory when serving (e.g. for a monitor that records to disk)."""


class Component(ABC):  # noqa: B024 - a marker base; each kind adds its abstract methods
    """Base of all components: built from its typed config by the plugin host.

    The host constructs each configured instance as ``cls(name, config)``: ``name`` is its key in
    ``endcap.yaml`` (``candidates: {deals: ...}`` → ``"deals"``; the ranker is ``"ranker"``) and
    ``config`` an instance of ``cls.Config`` validated from its settings. Override ``__init__``
    to set up in-memory state, calling ``super().__init__(name, config)`` first; learned state
    belongs in ``fit`` and ``load``, since serving builds fresh instances for every model version."""

    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    needs_ranking_examples: ClassVar[bool] = False
    """Set to ``True`` to receive :attr:`TrainingData.ranking_examples` (and, for monitors, the
    trained ranker's ``reference_scores`` on them) in ``fit``."""

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        """Train on ``data`` and save the learned state under ``directory``.

        Returns the parameters to record in the model manifest. Components with nothing to
        learn keep this default.
        """
        return {}

    def load(self, context: ModelContext) -> None:  # noqa: B027 - optional step
        """Load the state ``fit`` saved; called once per model version before serving."""


class CandidateGenerator(Component):
    """Proposes items for a user. Several run per request; their results are merged."""

    @abstractmethod
    def generate(self, query: Query, user: UserFeatures, n: int) -> Candidates:
        """Return at most ``n`` candidates (unique indices, higher score = better)."""

    def similar(self, item_index: int, n: int) -> Candidates | None:
        """Items similar to / bought with ``item_index``; ``None`` when not supported."""
        return None

    def prefetch(self, user_indices: IndexArray, n: int) -> None:
        """Called by the default :meth:`generate_block` with the block's known users before it
        asks for each of them: a generator that can answer many users at once (one matrix
        product for the block) computes and keeps their answers here. The default does nothing."""

    def generate_block(self, block: UserBlock, n: npt.NDArray[np.int64]) -> CandidateBlock:
        """Batch jobs: what :meth:`generate` returns for every row of ``block``, at most
        ``n[j]`` for row ``j``, in one :class:`CandidateBlock`.

        Override it to answer the block with array operations; the answers must be exactly
        those of :meth:`generate` (the batch engine is checked against the request pipeline).
        The default calls :meth:`prefetch`, then :meth:`generate` once per row."""
        known = block.user_indices
        known = known[known >= 0]
        if known.size and n.size:
            self.prefetch(known, int(n.max()))
        return CandidateBlock.join(
            [
                self.generate(query, user, int(m))
                for query, user, m in zip(block.queries, block.users, n.tolist(), strict=True)
            ]
        )


class Ranker(Component):
    """Scores the merged candidates of a request."""

    @abstractmethod
    def score(self, query: Query, features: FeatureMatrix) -> ScoreArray:
        """Return one score per row of ``features`` (higher = better)."""

    def score_block(self, block: UserBlock, features: FeatureMatrix, offsets: npt.NDArray[np.int64]) -> ScoreArray:
        """Batch jobs: :meth:`score` for every row of ``block`` at once, where row ``j``'s
        candidates are ``features`` rows ``offsets[j]:offsets[j + 1]``. A ranker that scores each
        candidate on its own features (no use of ``query``, no comparison across candidates)
        overrides it with one :meth:`score` call; the default calls :meth:`score` per row."""
        scores = np.empty(features.ids.size, dtype=np.float32)
        for j, query in enumerate(block.queries):
            rows = slice(int(offsets[j]), int(offsets[j + 1]))
            if rows.stop > rows.start:
                part = FeatureMatrix(features.ids[rows], features.names, features.values[rows])
                scores[rows] = self.score(query, part)
        return scores


class Filter(Component):
    """A business rule: keeps or drops candidates, and may boost the ranked scores."""

    @abstractmethod
    def keep(self, query: Query, ids: IndexArray) -> BoolArray:
        """Return a boolean mask over ``ids``: ``True`` keeps the item."""

    def boost(self, query: Query, ids: IndexArray) -> ScoreArray | None:
        """Return amounts to add to the ranker's scores of ``ids`` (e.g. promoted products), or
        ``None`` to leave them; called after ranking, for the kept candidates."""
        return None


class FeatureProvider(Component):
    """Gives the ranker named feature columns for a request's candidates, as one array block.

    The ranker's feature matrix is one column per candidate source, then each configured
    provider's :meth:`names`, in the order of ``features:`` in ``endcap.yaml``. The same
    :meth:`compute` builds the training examples a learned ranker fits on, so a column means the
    same thing offline and online. Product data from Feast comes in as ``products``: the
    features :meth:`product_references` names, read from the online store when a model version
    loads, and point-in-time (as of the day before each label basket) for training examples.
    """

    def product_references(self) -> tuple[str, ...]:
        """Feast features keyed on Endcap's ``product`` entity (``"view:feature"``, numeric)
        that :meth:`compute` receives as ``products``; none by default."""
        return ()

    @abstractmethod
    def names(self) -> tuple[str, ...]:
        """The columns this provider writes, in order; prefix them with the provider's own
        name (``deals.discount``) so they cannot clash with another provider's."""

    @abstractmethod
    def compute(self, query: Query, user: UserFeatures, ids: IndexArray, products: ScoreArray) -> ScoreArray:
        """The ``len(ids) × len(names())`` float32 block for candidates ``ids``.

        :param products: ``n_items × len(product_references())`` float32 in catalogue order
            (index it with ``ids``); NaN where the store holds no value for a product.
        """

    def compute_block(
        self, block: UserBlock, ids: IndexArray, offsets: npt.NDArray[np.int64], products: ScoreArray
    ) -> ScoreArray:
        """Batch jobs: :meth:`compute` for every row of ``block`` at once, where row ``j``'s
        candidates are ``ids[offsets[j]:offsets[j + 1]]``; the blocks stacked in row order.

        Override it with array operations over the whole block; the values must be exactly
        those :meth:`compute` gives. The default calls :meth:`compute` per row."""
        width = len(self.names())
        values = np.empty((ids.size, width), dtype=np.float32)
        for j, (query, user) in enumerate(zip(block.queries, block.users, strict=True)):
            rows = slice(int(offsets[j]), int(offsets[j + 1]))
            if rows.stop > rows.start:
                part = np.asarray(self.compute(query, user, ids[rows], products), dtype=np.float32)
                if part.shape != (rows.stop - rows.start, width):
                    raise ValueError(f"compute returned shape {part.shape}, expected {(rows.stop - rows.start, width)}")
                values[rows] = part
        return values


class Monitor(Component):
    """Observes the service. Return values are ignored and exceptions are logged and dropped.

    The hooks run one at a time, in the order the calls happened, after the caller has its
    answer: on the thread that served the call once its answer is sent, or within 20 ms on a
    thread of the monitors' own. A monitor costs the service CPU, not the caller's wait, and
    needs no locking of its own against other hook calls. ``/metrics`` scrapes first deliver the
    hooks of the calls answered before them.
    """

    def on_request(self, record: RequestRecord) -> None:
        """Called after a Recommend answer was computed."""

    def on_error(self, request_id: str, query: Query | None, error: BaseException) -> None:
        """Called when a request failed."""

    def on_events(self, events: tuple[Event, ...]) -> None:
        """Called after events were written to the event log."""

    def on_call(self, method: str, code: str, seconds: float) -> None:
        """Called after every API call (``Recommend``, ``RecordEvents``, …) with its gRPC status
        code name and duration."""

    def register_metrics(self, registry: Any) -> None:
        """Called once when serving starts: add your collectors to this
        ``prometheus_client.CollectorRegistry``. It is served at ``/metrics`` with
        ``endcap serve --metrics-port`` and written to disk by the ``recorder`` monitor."""
