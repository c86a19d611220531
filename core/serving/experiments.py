"""A/B experiments: stable assignment of users to variants, and one pipeline per variant."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

from endcap.config import EndcapConfig, ExperimentConfig
from endcap.errors import ConfigError, InvalidArgument
from endcap.serving.model import ServingModel
from endcap.serving.pipeline import Pipeline
from endcap.serving.user_memo import UserFeatureMemo, UserRows

DEFAULT_VARIANT = ""


def assign(experiment: ExperimentConfig, user_id: str) -> str:
    """The user's variant: a stable hash of experiment name and user id, cut by the shares."""
    digest = hashlib.sha256(f"{experiment.name}:{user_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    names = list(experiment.variants)
    for name in names:
        cumulative += experiment.variants[name].share
        if point < cumulative:
            return name
    return names[-1]


def variant_pipelines(model: ServingModel, online: UserRows, config: EndcapConfig) -> dict[str, Pipeline]:
    """One pipeline per variant over the same loaded model: its own ranker when it has one, and
    its own candidate sources (the others stay in the feature layout, proposing nothing). The
    variants share one memo of parsed user rows (see :mod:`endcap.serving.user_memo`)."""
    read_user = online.user
    users = UserFeatureMemo(online, model.user_features, config.serving.user_memo_users)
    experiment = config.experiment
    if experiment is None:
        return {DEFAULT_VARIANT: Pipeline(model, read_user, config.serving, users=users)}
    pipelines = {}
    for name, arm in experiment.variants.items():
        components = model.components
        unknown = sorted(set(arm.candidates or ()) - set(components.candidates))
        if unknown:
            raise ConfigError(
                f"{config.source}: experiment.variants.{name}.candidates names {unknown}, which are not configured "
                f"candidate generators ({', '.join(components.candidates)})"
            )
        ranker = components.variant_rankers.get(name, components.ranker)
        arm_model = replace(model, components=replace(components, ranker=ranker))
        skipped = frozenset(components.candidates) - frozenset(arm.candidates or components.candidates)
        pipelines[name] = Pipeline(arm_model, read_user, config.serving, skip_sources=skipped, users=users)
    return pipelines


def choose(pipelines: Mapping[str, Pipeline], config: EndcapConfig, user_id: str, forced: str) -> str:
    """The variant to serve: the forced one when given (it must exist), else the user's own."""
    experiment = config.experiment
    if experiment is None:
        if forced:
            raise InvalidArgument(f"variant {forced!r} was asked for, but no experiment is configured")
        return DEFAULT_VARIANT
    if forced:
        if forced not in pipelines:
            raise InvalidArgument(
                f"variant {forced!r} is not in experiment {experiment.name!r}; variants: {', '.join(pipelines)}"
            )
        return forced
    return assign(experiment, user_id)
