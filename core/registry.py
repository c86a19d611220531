"""The typed registry plugins add component classes to."""

from __future__ import annotations

from dataclasses import dataclass

from endcap.errors import PluginError
from endcap.types import CandidateGenerator, Component, FeatureProvider, Filter, Monitor, Ranker

KINDS: dict[str, type[Component]] = {
    "candidates": CandidateGenerator,
    "ranker": Ranker,
    "filters": Filter,
    "monitors": Monitor,
    "features": FeatureProvider,
}


@dataclass(frozen=True)
class RegisteredType:
    """A component class and the plugin that registered it."""

    kind: str
    type_name: str
    cls: type[Component]
    plugin: str


def kind_of(cls: type) -> str:
    """The component kind of ``cls`` (``candidates``, ``ranker``, ``filters``, ``monitors`` or ``features``)."""
    for kind, base in KINDS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return kind
    allowed = ", ".join(base.__name__ for base in KINDS.values())
    raise TypeError(f"{cls!r} is not a component class; subclass one of {allowed}")


class ComponentRegistry:
    """Component types by kind and type name. Plugins call :meth:`add`."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str], RegisteredType] = {}
        self._plugin = "<direct>"

    def scoped(self, plugin: str) -> ComponentRegistry:
        """Attribute the following registrations to ``plugin`` (used by the plugin host)."""
        self._plugin = plugin
        return self

    def add(self, cls: type[Component], type_name: str | None = None) -> None:
        """Register ``cls`` under ``type_name`` (default: the class name)."""
        try:
            kind = kind_of(cls)
        except TypeError as exc:
            raise PluginError(f"plugin {self._plugin!r}: {exc}") from exc
        name = type_name or cls.__name__
        existing = self._types.get((kind, name))
        if existing is not None and existing.cls is not cls:
            raise PluginError(
                f"plugin {self._plugin!r} registers {kind} type {name!r}, already registered by plugin "
                f"{existing.plugin!r}; pass another type_name to registry.add()"
            )
        self._types[(kind, name)] = RegisteredType(kind, name, cls, self._plugin)

    def get(self, kind: str, type_name: str) -> RegisteredType | None:
        return self._types.get((kind, type_name))

    def find(self, cls: type) -> RegisteredType | None:
        """The registration of ``cls``, or ``None`` when it was named by dotted path."""
        return next((t for t in self._types.values() if t.cls is cls), None)

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._types if k == kind)

    def by_plugin(self, plugin: str) -> list[RegisteredType]:
        return [t for t in self._types.values() if t.plugin == plugin]
