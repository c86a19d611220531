"""Every Endcap hook, grouped by lifecycle. These docstrings are the hook reference.

A plugin is a module (or object) registered under the ``endcap`` entry-point group whose
functions are decorated with :data:`endcap.hookimpl` and named after the hooks below.

Hooks *register* things; they are not called on the request path. Candidate generators,
rankers, filters and monitors are objects (subclasses of the base classes in
:mod:`endcap.types`) that the request pipeline calls directly, each isolated from the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from endcap.registry import ComponentRegistry
    from endcap.types import Component, TrainingData

hookspec = pluggy.HookspecMarker("endcap")

HOOK_API_VERSION = 1
"""The version of this hook API. It changes only when a hook changes incompatibly."""

# ---------------------------------------------------------------------------------------------
# Start-up: compatibility and registering component types
# ---------------------------------------------------------------------------------------------


@hookspec
def endcap_api_version() -> int:
    """Return the hook API version the plugin was written for.

    Called once per plugin when the plugin host loads, before anything else. A plugin whose
    version differs from :data:`HOOK_API_VERSION` is refused at start-up with an error naming it;
    a plugin that does not implement this hook is assumed to be compatible.

    :return: The hook API version, currently ``1``.

    Example::

        @endcap.hookimpl
        def endcap_api_version():
            return 1

    .. versionadded:: 0.1
    """


@hookspec
def endcap_register_components(registry: ComponentRegistry) -> None:
    """Register the component types this plugin provides.

    Called once when the plugin host loads, for every enabled plugin. Add each class with
    ``registry.add(cls)`` (or ``registry.add(cls, type_name="alias")``); the class must subclass
    :class:`~endcap.types.CandidateGenerator`, :class:`~endcap.types.Ranker`,
    :class:`~endcap.types.Filter` or :class:`~endcap.types.Monitor` and may declare a
    ``Config`` pydantic model (a :class:`~endcap.types.ComponentConfig`) for its settings.

    ``endcap.yaml`` then instantiates registered types by name::

        candidates:
          weekly_deals: {type: deals, max_items: 50}

    :param registry: The typed registry to add component classes to; a type name already
        taken by another plugin is refused with an error naming both plugins.

    Example::

        @endcap.hookimpl
        def endcap_register_components(registry):
            registry.add(DealsCandidates, type_name="deals")

    .. versionadded:: 0.1
    """


@hookspec
def endcap_feast_objects(features_dir: Path) -> list[Any] | None:
    """Contribute Feast definitions (entities, feature views, sources) to the feature store.

    Called by ``endcap features`` (and everything that builds features) before ``feast apply``;
    the objects are applied and materialized with Endcap's own. Components read the values
    back through :attr:`endcap.ModelContext.product_features`. Keep data files under
    ``features_dir`` (``<workspace>/features``) so a workspace stays self-contained.

    Join on Endcap's own entities rather than declaring new ones: ``product`` (join key
    ``item_id``) and ``user`` (join key ``user_id``), imported from
    ``endcap.feature_repo.definitions``. Their ids are the purchase log's, as strings.

    :param features_dir: The workspace's offline-store directory.
    :return: Feast objects to apply, or ``None``.

    Example::

        from endcap.feature_repo.definitions import product

        @endcap.hookimpl
        def endcap_feast_objects(features_dir):
            source = FileSource(path=str(features_dir / "stock.parquet"), timestamp_field="event_timestamp")
            return [FeatureView(name="stock", entities=[product],
                                schema=[Field(name="in_stock", dtype=Bool)], source=source)]

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def endcap_train_component(component: Component, data: TrainingData, directory: Path) -> Mapping[str, Any] | None:
    """Fit one configured component on the ingested purchase log and save it under ``directory``.

    Called by ``endcap train`` once per configured component, with an empty ``directory`` inside
    the new model version that belongs to that component alone. Endcap's own implementation runs
    last and calls ``component.fit(data, directory)``; a plugin can implement this hook to train
    a component another way, or as a ``wrapper=True`` hook to time or track training runs.

    :param component: The configured component instance (its ``name`` and ``config`` are set).
    :param data: The ingested log as catalogue indices plus the users × items matrix.
    :param directory: Where this component's artifacts must be written.
    :return: Parameters to record in the model manifest. Stops at first non-None result.

    .. versionadded:: 0.1
    """
