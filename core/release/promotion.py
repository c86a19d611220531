"""``endcap promote``: make a model version current, through the validation gate.

The gate compares systems on **the same holdout**, user by user: the per-user NDCG@10 values a
version recorded at train time (:mod:`endcap.release.validation_record`), resampled with a paired
bootstrap over users (:func:`endcap.evaluation.intervals.paired_interval`: 95 % interval of the
mean per-user difference).

* **Better than popularity** — the candidate's pipeline against G-TopFreq on the candidate's own
  holdout: the whole 95 % interval of mean(candidate − popularity) lies above zero. A candidate
  that is not is refused, even when no model is current.
* **Not worse than the current model** — on the candidate's holdout: when both versions recorded
  the same holdout fingerprint, their recorded per-user values are paired; otherwise the current
  version's recorded configuration is trained again on the candidate's holdout and scored there
  (see :func:`endcap.release.validation_record.rescore_configuration`). The candidate is refused when the
  whole 95 % interval of mean(candidate − current) lies below zero (clearly worse); a tie or a
  difference the holdout cannot tell apart is promoted, so a retrain of the same configuration on
  newer data replaces the model it refreshes. A current version written before configurations
  were recorded cannot be retrained: the candidate is then held to the popularity test alone, and
  the promotion says so.

``force`` skips both comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from endcap.errors import FailedPrecondition
from endcap.evaluation.intervals import paired_interval
from endcap.model_versions import Manifest, ModelRegistry
from endcap.release.validation_record import HoldoutScores, load_holdout_scores

GATE_METRIC = "ndcg@10"

Rescore = Callable[[Manifest, Manifest], np.ndarray]
"""``(candidate, current) -> per-user NDCG@10 of the current configuration on the candidate's
holdout``, in the order of the candidate's recorded users."""


class GateRefused(FailedPrecondition):
    """The candidate is not better than popularity, or worse than the current model, on the same
    holdout; the current model stays."""


@dataclass(frozen=True)
class Comparison:
    """The candidate against one reference system on one holdout (per-user NDCG@10)."""

    reference: str
    users: int
    candidate_mean: float
    reference_mean: float
    difference: float
    """Mean per-user difference, candidate − reference."""
    low: float
    high: float
    """The paired bootstrap's 95 % interval of :attr:`difference`."""
    how: str = ""
    """How the reference was scored on the candidate's holdout."""

    def describe(self) -> str:
        return (
            f"{GATE_METRIC} {self.candidate_mean:.4f} vs {self.reference} {self.reference_mean:.4f} on the same "
            f"{self.users} users (difference {self.difference:+.4f}, 95% interval [{self.low:+.4f}, {self.high:+.4f}]"
            f"{'; ' + self.how if self.how else ''})"
        )


@dataclass(frozen=True)
class Promotion:
    version: str
    previous: str | None
    candidate_score: float | None
    current_score: float | None
    forced: bool
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Comparisons the gate could not make, and why."""

    def lines(self) -> list[str]:
        """What the gate compared (and could not), a line each, for the command line."""
        return [f"against {c.reference}: {c.describe()}" for c in self.comparisons] + self.notes


def compare(candidate: np.ndarray, reference: np.ndarray, name: str, how: str = "") -> Comparison:
    difference = paired_interval(candidate, reference)
    return Comparison(
        name,
        int(candidate.size),
        float(np.mean(candidate)),
        float(np.mean(reference)),
        difference.mean,
        difference.low,
        difference.high,
        how,
    )


def _scores(registry: ModelRegistry, version: str) -> HoldoutScores | None:
    return load_holdout_scores(registry.path(version))


def _against_current(
    registry: ModelRegistry, chosen: Manifest, scores: HoldoutScores, current_version: str, rescore: Rescore | None
) -> Comparison | str:
    """The candidate against the current version on the candidate's holdout, or why that
    comparison cannot be made when the current version predates recorded configurations."""
    current = registry.manifest(current_version)
    current_scores = _scores(registry, current_version)
    name = f"the current {current_version}"
    if (
        current_scores is not None
        and current.holdout_fingerprint
        and current.holdout_fingerprint == chosen.holdout_fingerprint
        and np.array_equal(current_scores.user_ids, scores.user_ids)
    ):
        return compare(scores.pipeline, current_scores.pipeline, name, "both recorded on this holdout")
    if not current.configuration:
        return (
            f"the current {current_version} records no configuration (an earlier Endcap wrote it), so it cannot be "
            f"scored on this holdout: {chosen.version} was held to the popularity test alone"
        )
    if rescore is None:
        raise GateRefused(
            f"model {chosen.version} and the current {current_version} were validated on different holdouts, and "
            "nothing here can retrain the current configuration on the candidate's; the current model stays (run "
            "'endcap promote' in the workspace, or pass --force)"
        )
    try:
        reference = np.asarray(rescore(chosen, current), dtype=np.float64)
    except FailedPrecondition as exc:
        raise GateRefused(
            f"model {chosen.version} cannot be compared with the current {current_version}, "
            f"so the current model stays: {exc}"
        ) from exc
    return compare(scores.pipeline, reference, name, "the current configuration retrained on this holdout")


def promote(
    registry: ModelRegistry, version: str | None = None, force: bool = False, rescore: Rescore | None = None
) -> Promotion:
    """Make ``version`` (default: the newest) current when it passes the gate (module docstring).

    :param rescore: scores the current configuration on the candidate's holdout when the two
        versions were validated on different holdouts (the CLI passes
        :func:`endcap.release.validation_record.rescore_configuration`); without it such a pair is refused.
    :raises GateRefused: the candidate has no per-user validation values, is not better than
        popularity, or is clearly worse than the current model; ``force`` skips the comparisons.
    """
    versions = registry.versions()
    if not versions:
        raise FailedPrecondition(f"no model versions in {registry.root}; run 'endcap train' first")
    chosen = version or versions[-1]
    manifest = registry.manifest(chosen)
    current_version = registry.current()
    candidate_score = manifest.validation.get(GATE_METRIC)
    current_score = registry.manifest(current_version).validation.get(GATE_METRIC) if current_version else None
    comparisons: list[Comparison] = []
    notes: list[str] = []
    if not force:
        scores = _scores(registry, chosen)
        if scores is None or not manifest.holdout_fingerprint:
            raise GateRefused(
                f"model {chosen} has no per-user validation values to compare on (trained with --no-validate or by "
                "an earlier Endcap); retrain it with validation or pass --force"
            )
        popularity = compare(scores.pipeline, scores.popularity, "popularity (G-TopFreq)")
        comparisons.append(popularity)
        if popularity.low <= 0.0:
            raise GateRefused(
                f"model {chosen} is not better than the popularity baseline: {popularity.describe()}; a model must "
                "beat popularity with the whole 95% interval above zero. The current model stays "
                f"({current_version or 'none'}); pass --force to promote anyway"
            )
        if current_version and current_version != chosen:
            against = _against_current(registry, manifest, scores, current_version, rescore)
            if isinstance(against, str):
                notes.append(against)
            elif against.high < 0.0:
                raise GateRefused(
                    f"model {chosen} is worse than the current {current_version}: {against.describe()}; "
                    "the current model stays (pass --force to promote anyway)"
                )
            else:
                comparisons.append(against)
    registry.set_current(chosen)
    return Promotion(chosen, current_version, candidate_score, current_score, force, comparisons, notes)
