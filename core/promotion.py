"""``endcap promote``: make a model version current, through the validation gate."""

from __future__ import annotations

from dataclasses import dataclass

from endcap.errors import FailedPrecondition
from endcap.models import ModelRegistry

GATE_METRIC = "ndcg@10"


class GateRefused(FailedPrecondition):
    """The candidate is worse than the current model on validation; the current model stays."""


@dataclass(frozen=True)
class Promotion:
    version: str
    previous: str | None
    candidate_score: float | None
    current_score: float | None
    forced: bool


def promote(registry: ModelRegistry, version: str | None = None, force: bool = False) -> Promotion:
    """Make ``version`` (default: the newest) current unless it is worse on validation NDCG@10.

    :raises GateRefused: the candidate scores below the current model, or has no validation
        figures while the current model has; ``force`` skips the comparison.
    """
    versions = registry.versions()
    if not versions:
        raise FailedPrecondition(f"no model versions in {registry.root}; run 'endcap train' first")
    chosen = version or versions[-1]
    candidate = registry.manifest(chosen).validation.get(GATE_METRIC)
    current_version = registry.current()
    current = registry.manifest(current_version).validation.get(GATE_METRIC) if current_version else None
    if not force and current_version and current_version != chosen and current is not None:
        if candidate is None:
            raise GateRefused(
                f"model {chosen} has no validation {GATE_METRIC} to compare with the current {current_version} "
                f"({current:.4f}); retrain it with validation or pass --force"
            )
        if candidate < current:
            raise GateRefused(
                f"model {chosen} is worse than the current {current_version} on validation {GATE_METRIC}: "
                f"{candidate:.4f} < {current:.4f}; the current model stays (pass --force to promote anyway)"
            )
    registry.set_current(chosen)
    return Promotion(chosen, current_version, candidate, current, force)
