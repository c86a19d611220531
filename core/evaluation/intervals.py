"""Bootstrap confidence intervals over users: what every figure of ``endcap evaluate`` and the
promotion gate carry.

Users are drawn with replacement :data:`RESAMPLES` times from a generator seeded with
:data:`BOOTSTRAP_SEED`; an interval is the 2.5th and 97.5th percentiles of the resampled means.
The draws depend only on the number of users, so every system scored on the same users is
resampled with the same draws: the intervals of a paired difference and of each system's mean
come from one set of resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
_DRAWS_AT_ONCE = 4_000_000
"""Users drawn per chunk of resamples: memory stays bounded for millions of users."""


@dataclass(frozen=True)
class Interval:
    """A mean over users and its bootstrap interval."""

    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def text(self, signed: bool = False) -> str:
        form = "+.4f" if signed else ".4f"
        return f"{self.mean:{form}} [{self.low:{form}}, {self.high:{form}}]"


def resampled_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """The mean of ``values`` (users along the last axis) in each of ``resamples`` bootstrap
    draws of the users: shape ``values.shape[:-1] + (resamples,)``."""
    values = np.asarray(values, dtype=np.float64)
    users = values.shape[-1]
    rng = np.random.default_rng(seed)
    chunk = max(1, _DRAWS_AT_ONCE // max(users, 1))
    means = [
        values[..., rng.integers(0, users, size=(min(chunk, resamples - start), users))].mean(axis=-1)
        for start in range(0, resamples, chunk)
    ]
    return np.concatenate(means, axis=-1)


def bootstrap_interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of the per-user ``values`` and its 95 % bootstrap interval (all zero for no users)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(0.0, 0.0, 0.0)
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(resampled_means(values, resamples, seed), [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def paired_interval(
    candidate: np.ndarray, reference: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """Mean of ``candidate - reference`` (paired per user) and its 95 % bootstrap interval."""
    return bootstrap_interval(
        np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64), resamples, seed
    )
