"""Holdout splits of a purchase log: what the models may learn from, and what they are scored on.

Two protocols:

* ``last-basket`` (:func:`temporal_split`): each user's newest basket is the *test* target and
  the one before it the *validation* target; only users with at least three baskets are
  evaluated. The natural protocol for shopping baskets.
* ``random-holdout`` (:func:`random_split`): for data with no baskets worth the name (ratings,
  single purchases), a seeded random 25 % of each user's distinct items is the *test* target and
  another, disjoint 25 % the *validation* target; only users with at least
  :data:`MIN_RANDOM_HOLDOUT_ITEMS` distinct items are evaluated.

In both, the training lines of a target are everything that is neither the target nor a later
target (the validation split never sees the test target), and every line of a held-out
user/item pair is held out, so nothing of the answer leaks through a repeated purchase.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from endcap.data.baskets import add_basket_index
from endcap.data.canonical_log import log_columns
from endcap.errors import InvalidArgument

PROTOCOLS = ("last-basket", "random-holdout")
TARGETS = ("validation", "test")
DEFAULT_SEED = 20240101
"""The random holdout's default seed: fixed, so two runs on one log hold out the same rows."""
RANDOM_HOLDOUT_SHARE = 0.25
"""Share of a user's distinct items in each random target (at least one item)."""
MIN_RANDOM_HOLDOUT_ITEMS = 4
"""Users with fewer distinct items are not evaluated under ``random-holdout`` (they still train):
four items leave one for the test target, one for the validation target and two to learn from."""


@dataclass(frozen=True)
class TargetSplit:
    name: str
    training: pd.DataFrame
    """Canonical log lines the models may learn from."""
    target: pd.DataFrame
    """The evaluated users' target lines."""
    protocol: str = "last-basket"
    seed: int | None = None
    """The random holdout's seed (``None`` for ``last-basket``)."""

    def fingerprint(self) -> str:
        """sha256 of the protocol, the held-out user/item pairs and the training lines: two
        splits with one fingerprint score systems on the same ground."""
        return holdout_fingerprint(self)


def temporal_split(log_frame: pd.DataFrame, target: str) -> TargetSplit:
    """``test``: each evaluated user's newest basket; ``validation``: the one before it."""
    frame = add_basket_index(log_frame) if "basket_index" not in log_frame.columns else log_frame
    newest = frame.groupby("user_id", sort=False)["basket_index"].transform("max")
    evaluated = newest >= 2
    offset = {"test": 0, "validation": 1}[target]
    target_basket = newest - offset
    is_target = evaluated & (frame["basket_index"] == target_basket)
    after_target = evaluated & (frame["basket_index"] > target_basket)
    training = frame[~is_target & ~after_target]
    columns = log_columns(frame)
    return TargetSplit(target, training[columns], frame[is_target][columns])


def random_split(log_frame: pd.DataFrame, target: str, seed: int = DEFAULT_SEED) -> TargetSplit:
    """A seeded random slice of each evaluated user's distinct items.

    Each user's distinct items are put in a random order (one generator seeded with ``seed``
    over the pairs sorted by user and item, so the order does not depend on the log's row
    order); the first ``max(1, round(25 %))`` are the test target, the next as many the
    validation target. ``test`` trains on every other line; ``validation`` also leaves out the
    test items. Timestamps of training and target lines interleave: whatever is built from the
    training lines (features, snapshots) must be built from them alone.
    """
    if target not in TARGETS:
        raise InvalidArgument(f"unknown holdout target {target!r}; choose one of {', '.join(TARGETS)}")
    frame = log_frame[log_columns(log_frame)]
    pairs = frame[["user_id", "item_id"]].drop_duplicates().sort_values(["user_id", "item_id"], kind="stable")
    keys = np.random.default_rng(seed).random(len(pairs))
    pairs = pairs.assign(key=keys).sort_values(["user_id", "key"], kind="stable")
    distinct = pairs.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    position = pairs.groupby("user_id", sort=False).cumcount().to_numpy()
    held = np.maximum(1, np.rint(distinct * RANDOM_HOLDOUT_SHARE)).astype(np.int64)
    evaluated = distinct >= MIN_RANDOM_HOLDOUT_ITEMS
    slot = np.where(
        ~evaluated, "train", np.where(position < held, "test", np.where(position < 2 * held, "validation", "train"))
    )
    lines = frame.merge(pairs.assign(slot=slot)[["user_id", "item_id", "slot"]], on=["user_id", "item_id"], how="left")
    held_out = {"test": ("test",), "validation": ("test", "validation")}[target]
    training = lines[~lines["slot"].isin(held_out)]
    targets = lines[lines["slot"] == target]
    return TargetSplit(target, training[log_columns(frame)], targets[log_columns(frame)], "random-holdout", seed)


def split_for(log_frame: pd.DataFrame, target: str, protocol: str, seed: int = DEFAULT_SEED) -> TargetSplit:
    """The ``target`` split of ``log_frame`` under ``protocol`` (see the module docstring)."""
    if protocol == "last-basket":
        return temporal_split(log_frame, target)
    if protocol == "random-holdout":
        return random_split(log_frame, target, seed)
    raise InvalidArgument(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def _frame_digest(frame: pd.DataFrame, columns: list[str]) -> bytes:
    ordered = frame[columns].sort_values(columns, kind="stable")  # row order does not matter; values hash by value
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).digest()


def holdout_fingerprint(split: TargetSplit) -> str:
    """sha256 over the protocol, the held-out user/item pairs, and the training lines."""
    digest = hashlib.sha256(split.protocol.encode())
    digest.update(_frame_digest(split.target.drop_duplicates(["user_id", "item_id"]), ["user_id", "item_id"]))
    digest.update(_frame_digest(split.training, ["user_id", "item_id", "timestamp"]))
    return digest.hexdigest()
