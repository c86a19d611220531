"""How often shoppers buy again what they bought before, measured on the log, and what serving
does about it.

Groceries are bought again and again; films, books and sofas mostly once. ``endcap train``
measures the share of purchases that repeat an item the buyer had bought in an earlier basket,
and under ``serving.exclude_purchased: auto`` leaves already-bought items out of the answers
when that share is below :data:`REPEAT_THRESHOLD`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from endcap.data.baskets import add_basket_index
from endcap.data.integer_codes import sorted_codes

REPEAT_THRESHOLD = 0.05
"""Below this share of repeat purchases a domain counts as no-repeat (ratings, films, furniture):
an answer holding an already-bought item is then almost always a wasted slot."""


@dataclass(frozen=True)
class RepeatProfile:
    """The log's repeat consumption."""

    share: float
    """Purchases (lines) of an item the user had bought in an earlier basket, over all lines."""
    newest_basket_share: float
    """The same share within each user's newest basket (users with at least two baskets); 0 when
    no user has two."""
    lines: int


def measure(log: pd.DataFrame) -> RepeatProfile:
    """The repeat shares of a canonical log (``user_id``, ``item_id``, ``basket_id``, ``timestamp``),
    or of one with ``basket_index`` in place of ``basket_id`` and any ids (the training data's
    :func:`endcap.data.training_data.coded_log`)."""
    if log.empty:
        return RepeatProfile(0.0, 0.0, 0)
    frame = add_basket_index(log) if "basket_index" not in log.columns else log
    user, _ = sorted_codes(frame["user_id"])
    item, items = sorted_codes(frame["item_id"])
    basket = frame["basket_index"].to_numpy(np.int64)
    pairs, pair = np.unique(user.astype(np.int64) * max(len(items), 1) + item, return_inverse=True)
    first = np.full(len(pairs), np.iinfo(np.int64).max)
    np.minimum.at(first, pair, basket)
    repeat = basket > first[pair]
    newest = np.zeros(int(user.max()) + 1, np.int64)
    np.maximum.at(newest, user, basket)
    in_newest = (basket == newest[user]) & (newest[user] >= 1)
    return RepeatProfile(
        share=float(repeat.mean()),
        newest_basket_share=float(repeat[in_newest].mean()) if in_newest.any() else 0.0,
        lines=len(frame),
    )


LABEL_SHARE = 0.25
"""In a no-repeat log, the share of each user's newest lines a ranker learns to predict: a
basket there is one day of ratings, often a single item, too few to learn from."""


def label_share(log: pd.DataFrame) -> float:
    """How much of each user's newest history the ranker's training labels hold (see
    :func:`endcap.features.tables.label_baskets`): the newest basket in a log with repeat
    consumption, :data:`LABEL_SHARE` of the lines in one without."""
    return LABEL_SHARE if measure(log).share < REPEAT_THRESHOLD else 0.0


def exclude_purchased(setting: str, profile: RepeatProfile) -> bool:
    """Whether serving leaves out what the user already bought: ``always``, ``never``, or under
    ``auto`` when the log shows (almost) no repeat consumption."""
    if setting == "always":
        return True
    if setting == "never":
        return False
    return profile.share < REPEAT_THRESHOLD


def describe(setting: str, profile: RepeatProfile, excluded: bool) -> str:
    """One line for ``endcap train``'s output."""
    choice = "left out of answers" if excluded else "kept in answers"
    return (
        f"repeat purchases: {profile.share:.1%} of {profile.lines} lines "
        f"({profile.newest_basket_share:.1%} of the newest baskets); already-bought items are {choice} "
        f"(serving.exclude_purchased: {setting})"
    )
