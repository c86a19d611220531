"""``lightgbm``: a learned ranker (LightGBM lambdarank or binary) over the pipeline's features.

Trained on :class:`endcap.RankingExamples` (point-in-time features, labels from each user's
next basket); a request's candidates are scored in one ``predict`` call.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import endcap
import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from endcap.errors import FailedPrecondition
from endcap.types import ScoreArray, TrainingData
from pydantic import Field


class LightGbmRankerConfig(endcap.ComponentConfig):
    objective: Literal["lambdarank", "binary"] = "lambdarank"
    rounds: int = Field(200, ge=1)
    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(7, ge=2)
    min_child_samples: int = Field(50, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    validation_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of users held out of fitting to stop boosting when it stops helping (0: no early stopping)."""
    seed: int = 42
    threads: int = Field(2, ge=1)
    """Threads LightGBM fits with. The fit is deterministic for a given number of threads (and
    differs slightly between numbers), so it is a setting rather than the machine's core count."""
    compiled: bool = True
    """Score with the trees compiled to machine code by lleaves (the same scores as LightGBM's
    ``predict``, about ten times faster for a request's few hundred candidates; compiling takes
    about half a second per model load). ``false`` scores with LightGBM itself."""


Rows = npt.NDArray[np.float64]
Predict = Callable[[Rows], object]
"""Scores a C-ordered float64 feature matrix: one score per row (LightGBM types its result as any
of its output kinds; :meth:`LightGbmRanker.score` reads it as an array)."""


class LightGbmRanker(endcap.Ranker):
    Config = LightGbmRankerConfig
    config: LightGbmRankerConfig
    needs_ranking_examples = True

    def __init__(self, name: str, config: LightGbmRankerConfig) -> None:
        super().__init__(name, config)
        self._columns_by_layout: dict[tuple[str, ...], slice | npt.NDArray[np.int64]] = {}

    def _params(self) -> dict[str, Any]:
        return {
            "objective": self.config.objective,
            "learning_rate": self.config.learning_rate,
            "num_leaves": self.config.num_leaves,
            "min_child_samples": self.config.min_child_samples,
            "seed": self.config.seed,
            "deterministic": True,
            "num_threads": self.config.threads,
            "verbosity": -1,
            **({"eval_at": [10], "metric": "ndcg"} if self.config.objective == "lambdarank" else {}),
        }

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        examples = data.ranking_examples
        if examples is None or examples.labels.sum() == 0:
            raise FailedPrecondition(
                f"ranker {self.name!r} needs users with at least two baskets whose newest basket holds a "
                "candidate; ingest a longer purchase log"
            )
        bounds = np.concatenate([[0], np.cumsum(examples.groups)])
        positive = np.add.reduceat(examples.labels, bounds[:-1]) > 0 if examples.groups.size else np.zeros(0, bool)
        rng = np.random.default_rng(self.config.seed)
        users, user_of_group = np.unique(np.asarray(examples.user_ids, dtype=object), return_inverse=True)
        held_out = (rng.random(users.size) < self.config.validation_share)[user_of_group]  # all of a user's groups
        if held_out.all() or not (positive & ~held_out).any():
            held_out[:] = False
        datasets = {}
        for part, users in (("train", positive & ~held_out), ("valid", positive & held_out)):
            rows = np.concatenate(
                [np.arange(bounds[i], bounds[i + 1]) for i in np.flatnonzero(users)] or [np.zeros(0, np.int64)]
            ).astype(np.int64)
            if rows.size:
                datasets[part] = lgb.Dataset(
                    examples.values[rows],
                    label=examples.labels[rows],
                    group=examples.groups[users] if self.config.objective == "lambdarank" else None,
                    feature_name=[n.replace(".", "__") for n in examples.names],
                    free_raw_data=False,
                )
        callbacks: list[Callable[..., Any]] = []
        valid_sets = []
        if "valid" in datasets:
            datasets["valid"].reference = datasets["train"]
            valid_sets = [datasets["valid"]]
            callbacks.append(lgb.early_stopping(self.config.early_stopping_rounds, verbose=False))
        booster = lgb.train(
            self._params(), datasets["train"], self.config.rounds, valid_sets=valid_sets, callbacks=callbacks
        )
        booster.save_model(str(directory / "model.txt"), num_iteration=booster.best_iteration or None)
        (directory / "features.json").write_text(json.dumps(list(examples.names)))
        importance = booster.feature_importance("gain")
        top = sorted(zip(examples.names, importance.tolist(), strict=True), key=lambda p: -p[1])[:5]
        return {
            **self.config.model_dump(),
            "best_iteration": int(booster.best_iteration or booster.current_iteration()),
            "training_groups": int((positive & ~held_out).sum()),
            "top_features_by_gain": {name: round(gain, 1) for name, gain in top},
        }

    def load(self, context: endcap.ModelContext) -> None:
        model_file = str(context.directory / "model.txt")
        self.booster = lgb.Booster(model_file=model_file)
        self._predict: Predict = functools.partial(self.booster.predict, num_threads=1)  # no cycle through self
        if self.config.compiled:
            import lleaves

            compiled = lleaves.Model(model_file=model_file)
            compiled.compile()
            self._predict = _entry_point(compiled)
        self.names = tuple(json.loads((context.directory / "features.json").read_text()))

    def _columns(self, names: tuple[str, ...]) -> slice | npt.NDArray[np.int64]:
        """Where the model's features sit in a served layout: a slice when they are all of it in
        order (no copy needed), else their positions."""
        columns = self._columns_by_layout.get(names)
        if columns is None:
            missing = [n for n in self.names if n not in names]
            if missing:
                raise ValueError(f"features {missing} the model was trained with are not served; retrain")
            positions = np.array([names.index(n) for n in self.names], dtype=np.int64)
            same = positions.size == len(names) and bool((positions == np.arange(len(names))).all())
            columns = slice(None) if same else positions
            self._columns_by_layout[names] = columns
        return columns

    def score(self, query: endcap.Query, features: endcap.FeatureMatrix) -> ScoreArray:
        values = np.ascontiguousarray(features.values[:, self._columns(features.names)], dtype=np.float64)
        return np.asarray(self._predict(values), dtype=np.float32)

    def score_block(
        self, block: endcap.UserBlock, features: endcap.FeatureMatrix, offsets: npt.NDArray[np.int64]
    ) -> ScoreArray:
        """Every candidate is scored on its own row: the whole block in one call."""
        return self.score(block.queries[0], features) if len(block) else np.empty(0, dtype=np.float32)


LONG_CALL_ROWS = 2048
"""From this many rows (a batch block) a call lets go of the GIL while it scores."""


def _entry_point(compiled: Any) -> Callable[[Rows], Rows]:
    """The compiled trees' entry point, called straight with the array's address.

    ``lleaves.Model.predict`` converts and checks its input and builds two ctypes pointers on
    every call, which costs as much as scoring a request's candidates; :meth:`score` already
    hands over a C-ordered float64 array of the model's columns. A request's call keeps the GIL:
    it lasts tens of microseconds, less than handing the GIL to another thread and back. A batch
    block's call (:data:`LONG_CALL_ROWS` rows or more) lasts tens of milliseconds and lets the
    other threads run meanwhile."""
    if not compiled.use_fp64 or compiled.num_model_per_iteration() != 1:
        return lambda values: compiled.predict(values, n_jobs=1)
    address = ctypes.cast(compiled._c_entry_func, ctypes.c_void_p).value
    if address is None:
        raise ValueError("the compiled model has no entry point")
    signature = (None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)
    short_call = ctypes.PYFUNCTYPE(*signature)(address)
    long_call = ctypes.CFUNCTYPE(*signature)(address)
    columns = compiled.num_feature()

    def predict(values: Rows, compiled: Any = compiled) -> Rows:  # the model owns the machine code
        if values.shape[1:] != (columns,) or values.dtype != np.float64 or not values.flags.c_contiguous:
            raise ValueError(f"expected C-ordered float64 rows of {columns} features; got {values.dtype}{values.shape}")
        scores = np.empty(values.shape[0], dtype=np.float64)
        entry = long_call if values.shape[0] >= LONG_CALL_ROWS else short_call
        entry(values.ctypes.data, scores.ctypes.data, 0, values.shape[0])
        return scores

    return predict


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(LightGbmRanker, type_name="lightgbm")
