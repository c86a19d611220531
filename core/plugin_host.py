"""The plugin host: a fresh pluggy manager per host, entry-point loading, validation, components."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
import structlog
from endcap import core_hooks, hookspecs
from endcap.config import ComponentBlock, EndcapConfig, describe_validation_error
from endcap.errors import ConfigError, PluginError
from endcap.hookspecs import HOOK_API_VERSION
from endcap.registry import KINDS, ComponentRegistry, RegisteredType
from endcap.types import CandidateGenerator, Component, FeatureProvider, Filter, Monitor, Ranker
from pydantic import ValidationError

PROJECT = "endcap"
ENTRY_POINT_GROUP = "endcap"
TRACE_ENV = "ENDCAP_TRACE_HOOKS"


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, the distribution version and the hooks it implements."""

    name: str
    version: str
    hooks: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Components:
    """The component instances one configuration asks for, by kind."""

    candidates: Mapping[str, CandidateGenerator]
    ranker: Ranker
    filters: Mapping[str, Filter]
    monitors: Mapping[str, Monitor]
    variant_rankers: Mapping[str, Ranker] = field(default_factory=dict)
    """Rankers of experiment arms that bring their own, by variant name."""
    features: Mapping[str, FeatureProvider] = field(default_factory=dict)
    """Feature providers, in layout order."""

    def all(self) -> list[Component]:
        return [
            *self.candidates.values(),
            self.ranker,
            *self.variant_rankers.values(),
            *self.filters.values(),
            *self.features.values(),
            *self.monitors.values(),
        ]


def trace_hook_calls(manager: pluggy.PluginManager) -> None:
    """Log every hook call with the plugins it reached and its duration (``ENDCAP_TRACE_HOOKS=1``)."""
    log = structlog.get_logger("endcap.hooks")
    started: list[float] = []

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        started.append(time.perf_counter())

    def after(
        outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        log.info(
            "hook_call",
            hook=hook_name,
            plugins=[impl.plugin_name for impl in impls],
            ms=round((time.perf_counter() - started.pop()) * 1000, 3),
            failed=outcome.exception is not None,
        )

    manager.add_hookcall_monitoring(before, after)


def new_plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with Endcap's hookspecs and nothing registered."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(core_hooks, name="endcap.core")
    return manager


class PluginHost:
    """Loads the allow-listed plugins, validates them and builds configured components."""

    def __init__(
        self, config: EndcapConfig, extra_plugins: Mapping[str, object] | None = None, trace: bool | None = None
    ) -> None:
        self.config = config
        self.manager = new_plugin_manager()
        self.tracing = trace if trace is not None else os.environ.get(TRACE_ENV, "") not in ("", "0")
        if self.tracing:
            trace_hook_calls(self.manager)
        self._infos: dict[str, PluginInfo] = {}
        self._load_entry_points(config.plugins)
        for name, plugin in (extra_plugins or {}).items():
            self._register(name, plugin, version="", source=repr(plugin))
        self.registry = self._collect_component_types()

    # -- loading ---------------------------------------------------------------------------

    def _load_entry_points(self, allowed: Iterable[str]) -> None:
        available = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name in allowed:
            ep = available.get(name)
            if ep is None:
                known = ", ".join(sorted(available)) or "none"
                raise PluginError(
                    f"plugin {name!r} is enabled in {self.config.source} but no installed package "
                    f"provides it under the {ENTRY_POINT_GROUP!r} entry-point group (installed: {known}); "
                    "install it or remove it from 'plugins'"
                )
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}; "
                    "fix or uninstall it, or remove it from 'plugins'"
                ) from exc
            version = ep.dist.version if ep.dist is not None else ""
            self._register(name, module, version=version, source=ep.value)

    def _register(self, name: str, plugin: object, version: str, source: str) -> None:
        try:
            self.manager.register(plugin, name=name)
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} ({source}) is invalid: {exc}") from exc
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({source}) could not be registered: {exc}") from exc
        hooks = tuple(sorted(h.name for h in self.manager.get_hookcallers(plugin) or ()))
        self._infos[name] = PluginInfo(name, version, hooks, source)
        self._check_api_version(name, plugin, source)

    def _check_api_version(self, name: str, plugin: object, source: str) -> None:
        for impl in self.manager.hook.endcap_api_version.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            declared = impl.function()
            if declared != HOOK_API_VERSION:
                self.manager.unregister(plugin)
                raise PluginError(
                    f"plugin {name!r} ({source}) was written for Endcap hook API version {declared}, but this "
                    f"Endcap speaks version {HOOK_API_VERSION}; install a release of the plugin made for it, "
                    "or remove it from 'plugins'"
                )

    def _collect_component_types(self) -> ComponentRegistry:
        registry = ComponentRegistry()
        for impl in self.manager.hook.endcap_register_components.get_hookimpls():
            if impl.plugin_name == "endcap.core":
                continue
            started = time.perf_counter()
            try:
                impl.function(registry=registry.scoped(impl.plugin_name))
                if self.tracing:
                    structlog.get_logger("endcap.hooks").info(
                        "hook_call",
                        hook="endcap_register_components",
                        plugins=[impl.plugin_name],
                        ms=round((time.perf_counter() - started) * 1000, 3),
                    )
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in endcap_register_components: {type(exc).__name__}: {exc}"
                ) from exc
        return registry

    # -- introspection ---------------------------------------------------------------------

    @property
    def plugins(self) -> list[PluginInfo]:
        return [self._infos[name] for name in sorted(self._infos)]

    def disabled_plugins(self) -> list[tuple[str, str, str]]:
        """Installed ``endcap`` entry points not in the allow-list: (name, version, source)."""
        return sorted(
            (ep.name, ep.dist.version if ep.dist is not None else "", ep.value)
            for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.name not in self._infos
        )

    def feast_objects(self, features_dir: Path) -> list[Any]:
        """Feast definitions contributed by plugins (see ``endcap_feast_objects``)."""
        contributed = self.manager.hook.endcap_feast_objects(features_dir=features_dir)
        return [obj for objects in contributed if objects for obj in objects]

    def types_of(self, plugin: str) -> list[RegisteredType]:
        return self.registry.by_plugin(plugin)

    # -- components ------------------------------------------------------------------------

    def build_components(self) -> Components:
        """Instantiate every component the configuration names, validating each block."""
        config = self.config
        return Components(
            candidates={n: self._build("candidates", f"candidates.{n}", n, b) for n, b in config.candidates.items()},
            ranker=self._build("ranker", "ranker", "ranker", config.ranker),
            filters={n: self._build("filters", f"filters.{n}", n, b) for n, b in config.filters.items()},
            monitors={n: self._build("monitors", f"monitors.{n}", n, b) for n, b in config.monitors.items()},
            features={n: self._build("features", f"features.{n}", n, b) for n, b in config.features.items()},
            variant_rankers={
                variant: self._build("ranker", f"experiment.variants.{variant}.ranker", f"ranker@{variant}", arm.ranker)
                for variant, arm in (config.experiment.variants.items() if config.experiment else ())
                if arm.ranker is not None
            },
        )

    def _build(self, kind: str, key: str, name: str, block: ComponentBlock) -> Any:
        cls, plugin = self._resolve_type(kind, key, block.type)
        try:
            settings = cls.Config.model_validate(block.settings())
        except ValidationError as exc:
            raise ConfigError(
                f"{self.config.source}: {key} (type {block.type!r} from plugin {plugin!r}): "
                f"{describe_validation_error(exc)}"
            ) from exc
        try:
            return cls(name, settings)
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r}: {cls.__name__} for {key} failed to start: {type(exc).__name__}: {exc}"
            ) from exc

    def _resolve_type(self, kind: str, key: str, type_name: str) -> tuple[type[Component], str]:
        registered = self.registry.get(kind, type_name)
        if registered is not None:
            return registered.cls, registered.plugin
        if "." in type_name:
            module_name, _, attr = type_name.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"{self.config.source}: {key}.type: cannot import {type_name!r}: {exc}") from exc
            if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
                raise ConfigError(
                    f"{self.config.source}: {key}.type: {type_name!r} is not a {KINDS[kind].__name__} subclass"
                )
            return cls, module_name
        allowed = ", ".join(self.registry.names(kind)) or "none registered"
        raise ConfigError(
            f"{self.config.source}: {key}.type: unknown {kind} type {type_name!r}; "
            f"allowed: {allowed} (or a dotted class path)"
        )
