"""``endcap.yaml``: the one configuration file of a workspace, read into pydantic models.

Values may reference environment variables as ``${NAME}``. Every section rejects unknown keys;
each component block is ``{type: <registered type name>, ...settings}`` and its settings are
validated against the component's own ``Config`` model when the plugin host builds it.

The file adds to the defaults, it does not replace them (see :func:`layer_on_defaults`):
``plugins:`` names plugins loaded beside the built-in ones, and a component named under
``candidates:``, ``filters:``, ``features:`` or ``monitors:`` joins that section's defaults. ``name: null``
removes one default; ``replace_defaults: true`` in a section starts it empty.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from endcap.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_FILE = "endcap.yaml"
BUILTIN_PLUGINS = (
    "popularity",
    "repurchase",
    "als",
    "item2item",
    "linear_ranker",
    "lightgbm_ranker",
    "tifuknn",
    "blocklist",
    "structlog_monitor",
    "service_metrics",
    "recommendation_health",
    "online_quality",
    "drift",
    "metrics_recorder",
    "ranking_features",
    "cart_position",
)


class ComponentBlock(BaseModel):
    """One configured component: a registered type name plus that type's own settings."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    default_k: int = Field(10, ge=1, le=1000)
    max_k: int = Field(1000, ge=1)
    candidates_per_source: int = Field(100, ge=1, le=10_000)
    similar_items_source: str = "als"
    """Name of the candidate generator that answers SimilarItems."""
    fallback_source: str = "popularity"
    """Name of the candidate generator that serves when every other source returned nothing."""
    max_workers: int = Field(8, ge=1)
    """Threads running API calls in one server process (``limits.max_concurrent_requests`` bounds
    how many more may wait). A process runs Python on one core at a time: use ``endcap serve
    --processes`` for more cores."""
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    """On SIGTERM or SIGINT health turns ``NOT_SERVING``; calls in flight get this long to finish."""
    shutdown_timeout_seconds: float = Field(25.0, gt=0)
    """A stop that has not ended the process this long after the signal (a plugin call or model
    load that never returns, say) writes every thread's stack to stderr and exits with status 1,
    so a server never hangs in shutdown and its log says where it was stuck."""
    user_memo_users: int = Field(20_000, ge=0)
    """Users whose parsed feature rows a server process keeps between requests (least recently
    used dropped first; about 3.4 KB for a user with 90 products). The row is still read on every
    request; the kept parse is used only when the stored bytes are the same, so an answer never
    lags a write. With Redis every row is parsed. 0 parses the row on every request."""
    exclude_purchased: Literal["auto", "always", "never"] = "auto"
    """Leave items the user already bought out of their answers. ``auto`` (default) decides at
    ``endcap train`` from the log: left out when under 5 % of purchases repeat an earlier one (a
    ratings or durable-goods log), kept otherwise (groceries). The model version records the
    choice; a server follows the version it serves."""
    reload_poll_seconds: float = Field(1.0, ge=0)
    """How often a server checks the model registry for a newly promoted version (0: never)."""
    realtime_features: bool = True
    """``RecordEvents`` purchases update the buyer's online features at once (Feast push sources)."""
    opentelemetry: bool = False
    """Emit an OpenTelemetry span per request with a child per pipeline stage. Spans go to the
    tracer provider the process is given (e.g. ``opentelemetry-instrument`` and ``OTEL_*``
    variables); without one they cost nothing."""

    @model_validator(mode="after")
    def _timeout_after_grace(self) -> ServingConfig:
        if self.shutdown_timeout_seconds <= self.shutdown_grace_seconds:
            raise ValueError(
                f"shutdown_timeout_seconds ({self.shutdown_timeout_seconds:g}) must be longer than "
                f"shutdown_grace_seconds ({self.shutdown_grace_seconds:g}); raise the timeout or shorten the grace"
            )
        return self


class FeatureStoreConfig(BaseModel):
    """Which Feast configuration the workspace uses (``feature_repo/feature_store.<profile>.yaml``).

    ``local``: SQLite online store and a file registry inside the workspace — one machine.
    ``redis``: the Redis online store at ``redis`` and a registry at ``registry`` (a path every
    server can read, e.g. on a shared volume), so several replicas serve from one store.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    profile: Literal["local", "redis"] = "local"
    redis: str = "localhost:6379"
    """Feast's Redis connection string: ``host:port`` with options such as ``,password=...,ssl=true``."""
    registry: Path | None = None
    """Feast registry file; default ``<workspace>/feast/registry.db``."""


class TrainingConfig(BaseModel):
    """How ``endcap train`` builds the learned ranker's examples."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label_baskets: int = Field(1, ge=1, le=20)
    """How many of each user's newest baskets the ranker learns from, each a query group of its
    own: the candidate sources are trained on the log without the user's newest ``k`` baskets
    and the features read as of just before the ``k``-th newest (point in time). More groups
    cost training time (the sources are trained once per depth); ``endcap features`` writes a
    snapshot for every label day, so run it again after raising this. A log without repeat
    purchases always uses its newest quarter of lines (one group per user). On the demo, three
    label baskets gave the same accuracy as one at five times the training time."""
    ranking_users: int = Field(20_000, ge=1)
    """Users whose label baskets give the ranker's examples: all of them up to this many, else a
    seeded sample of this many (the same users at every depth). The candidate sources and
    features still learn from every user; the examples grow with the users times the candidates
    per user: a million shoppers' would not fit in memory, 20,000 users' are about 5 million
    rows at 250 candidates each, which LightGBM fits in about a minute and a half on two cores.
    ``endcap features`` writes the point-in-time training snapshots for the same sample only
    (the serving snapshot holds everyone): after changing it, run ``endcap features`` again."""


class LimitsConfig(BaseModel):
    """What one call may ask for; a call over a limit is refused with a message naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_exclude_items: int = Field(1000, ge=0)
    max_context_entries: int = Field(64, ge=0)
    max_context_value_length: int = Field(1024, ge=1)
    max_id_length: int = Field(256, ge=1)
    max_events_per_call: int = Field(1000, ge=1)
    max_concurrent_requests: int = Field(64, ge=1)
    """API calls in flight, counted from arrival: running, or waiting for one of the
    ``serving.max_workers`` threads. Past it new calls get RESOURCE_EXHAUSTED at once instead of
    queueing. Health checks are not counted."""


class TlsConfig(BaseModel):
    """TLS for the gRPC port; with ``client_ca_file`` clients must present a certificate it signed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


ROLES = ("recommend", "record", "admin")


class AuthConfig(BaseModel):
    """Bearer tokens (``authorization: Bearer <token>`` metadata), from a file or the environment.

    ``tokens_file`` is YAML: ``tokens: [{name: storefront, token: "...", roles: [recommend]}]``;
    ``tokens_env`` names a variable holding ``name:token:role+role;name:token:role``.
    Roles: ``recommend`` (Recommend, SimilarItems), ``record`` (RecordEvents), ``admin``
    (everything, including GetModelInfo). Health checks and reflection stay open.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens_file: Path | None = None
    tokens_env: str | None = None
    allow_insecure_tokens: bool = False
    """Serve tokens on a port without ``tls:`` (they then cross the network in clear text); the
    server refuses to start so otherwise. Same as ``endcap serve --allow-insecure-tokens``."""


class MetricsConfig(BaseModel):
    """``/metrics`` (``endcap serve --metrics-port``): with ``token_env``, a scrape must send
    ``Authorization: Bearer <token>``, the token read from that environment variable. A token of
    its own, not a gRPC caller's: ``/metrics`` is plain HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    token_env: str | None = None


class VariantConfig(BaseModel):
    """One arm of an experiment: its traffic share and what it changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    share: float = Field(gt=0, le=1)
    ranker: ComponentBlock | None = None
    """A ranker of its own (trained with the model, beside the main one); default: the main ranker."""
    candidates: list[str] | None = None
    """The candidate generators this arm uses, by name (default: all configured)."""


class ExperimentConfig(BaseModel):
    """An A/B test: users are assigned by a stable hash of experiment name and user id; a request's
    ``variant`` field forces an arm. Metrics and logs carry the variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    variants: dict[str, VariantConfig]

    @model_validator(mode="after")
    def _shares_add_up(self) -> ExperimentConfig:
        total = sum(v.share for v in self.variants.values())
        if not self.variants or abs(total - 1.0) > 1e-6:
            raise ValueError(f"variant shares must add up to 1; they add up to {total:g}")
        return self


def _default_candidates() -> dict[str, ComponentBlock]:
    return {name: ComponentBlock(type=name) for name in ("popularity", "repurchase", "tifuknn", "als", "item2item")}


def _default_features() -> dict[str, ComponentBlock]:
    return {
        "user": ComponentBlock(type="user_stats"),
        "product": ComponentBlock(type="product_stats"),
        "user_product": ComponentBlock(type="user_product"),
        "cadence": ComponentBlock(type="cadence"),
        "calendar": ComponentBlock(type="calendar"),
    }


class EndcapConfig(BaseModel):
    """The whole ``endcap.yaml``. Every key has a default, so the file is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    plugins: tuple[str, ...] = BUILTIN_PLUGINS
    """Allow-list of plugins (entry-point names in the ``endcap`` group) to load."""
    serving: ServingConfig = ServingConfig()
    feature_store: FeatureStoreConfig = FeatureStoreConfig()
    training: TrainingConfig = TrainingConfig()
    limits: LimitsConfig = LimitsConfig()
    experiment: ExperimentConfig | None = None
    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    candidates: dict[str, ComponentBlock] = Field(default_factory=_default_candidates)
    ranker: ComponentBlock = ComponentBlock(type="lightgbm")
    filters: dict[str, ComponentBlock] = Field(default_factory=dict)
    features: dict[str, ComponentBlock] = Field(default_factory=_default_features)
    """Feature providers: the ranker's columns after the candidate sources', in this order."""
    monitors: dict[str, ComponentBlock] = Field(
        default_factory=lambda: {
            "request_log": ComponentBlock(type="structlog"),
            "metrics": ComponentBlock(type="prometheus"),
            "health": ComponentBlock(type="recommendation_health"),
            "online_quality": ComponentBlock(type="online_quality"),
            "drift": ComponentBlock(type="drift"),
            "recorder": ComponentBlock(type="recorder"),
        }
    )
    source: str = "<defaults>"
    """Where this configuration was read from (set by :func:`load_config`)."""


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


COMPONENT_SECTIONS = ("candidates", "filters", "features", "monitors")
REPLACE_DEFAULTS = "replace_defaults"


def layer_on_defaults(raw: dict[str, Any], where: str = CONFIG_FILE) -> dict[str, Any]:
    """``raw`` (a parsed ``endcap.yaml``) over the defaults, as :class:`EndcapConfig` input.

    ``plugins``: the built-in plugins, then the ones listed. ``candidates``, ``filters``,
    ``features`` and ``monitors``: the defaults, then the file's components by name (a name the defaults use is
    replaced); ``name: null`` drops a default, and ``replace_defaults: true`` drops them all."""
    layered = dict(raw)
    if "plugins" in raw:
        listed = raw["plugins"]
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise ConfigError(f"{where}: plugins: expected a list of plugin names, like [my_plugin]")
        layered["plugins"] = list(dict.fromkeys([*BUILTIN_PLUGINS, *listed]))
    defaults = EndcapConfig()
    for section in COMPONENT_SECTIONS:
        if section not in raw:
            continue
        named = raw[section] or {}
        if not isinstance(named, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of name: {{type: ..., settings}}")
        replace = named.get(REPLACE_DEFAULTS, False)
        if not isinstance(replace, bool):
            raise ConfigError(f"{where}: {section}.{REPLACE_DEFAULTS}: expected true or false")
        merged: dict[str, Any] = {} if replace else {n: b.model_dump() for n, b in getattr(defaults, section).items()}
        for name, block in named.items():
            if name == REPLACE_DEFAULTS:
                continue
            if block is None:
                merged.pop(name, None)
            else:
                merged[name] = block
        layered[section] = merged
    return layered


def _expand_env(text: str, path: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(f"{path}:{line}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(replace, text)


def load_config(workspace: Path) -> EndcapConfig:
    """Read ``<workspace>/endcap.yaml`` over the defaults; the defaults when the file is absent."""
    path = workspace / CONFIG_FILE
    if not path.exists():
        return EndcapConfig()
    raw = read_config_file(path)
    try:
        return EndcapConfig.model_validate({**layer_on_defaults(raw, str(path)), "source": str(path)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping ``path`` holds, environment references expanded; a clear error when it is not one."""
    try:
        raw = yaml.safe_load(_expand_env(path.read_text(), path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: the dotted key and what is wrong with it."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<top level>"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{key}: {message}")
    return "; ".join(problems)
