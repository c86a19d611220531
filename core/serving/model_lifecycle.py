"""The model version a server answers with, through its life: loaded at start (the newest sound
one), warmed up, switched to a newly promoted version between requests (the registry is polled),
a version that fails to load refused while the serving one stays, and the one switched away from
released once its last request is done, with the garbage collector tuned around it (see
:mod:`endcap.serving.memory`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from endcap.config import EndcapConfig
from endcap.errors import EndcapError
from endcap.features.coverage import check_model_against_store
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.serving.experiments import variant_pipelines
from endcap.serving.memory import RetiredModels, freeze_survivors
from endcap.serving.model import ServingModel, load_newest_sound_model, load_serving_model
from endcap.serving.online_store import OnlineStore
from endcap.serving.pipeline import Pipeline
from endcap.serving.similar_items import SimilarItems
from endcap.workspace import Workspace

log = structlog.get_logger("endcap.service")


@dataclass(frozen=True)
class ServedVersion:
    """One loaded model version as served: a pipeline per experiment variant, and SimilarItems.
    Swapped whole by a reload; a request reads it once, so every answer comes from one version."""

    pipelines: Mapping[str, Pipeline]
    similar: SimilarItems

    @property
    def pipeline(self) -> Pipeline:
        """The default pipeline (the first variant's)."""
        return next(iter(self.pipelines.values()))

    @property
    def model(self) -> ServingModel:
        return self.pipeline.model


def served_version(model: ServingModel, online: OnlineStore, config: EndcapConfig) -> ServedVersion:
    """``model``'s pipelines, warmed up, and its SimilarItems (counting dropped filters with the
    default pipeline's)."""
    pipelines = warmed_up(variant_pipelines(model, online, config))
    default = next(iter(pipelines.values()))
    return ServedVersion(pipelines, SimilarItems(default.model, config.serving, default.calls))


def warmed_up(pipelines: dict[str, Pipeline], users: int = 20, seconds: float = 1.0) -> dict[str, Pipeline]:
    """Run a few requests through each pipeline before it serves (first calls fill caches and
    allocate buffers), for at most ``seconds`` in all."""
    stop_at = time.monotonic() + seconds
    for pipeline in pipelines.values():
        for user_id in pipeline.model.catalog.user_ids[:users].tolist():
            if time.monotonic() > stop_at:
                break
            try:
                pipeline.recommend(pipeline.make_query(str(user_id), 0))
            except Exception as exc:  # warm-up is best effort; real requests report their own errors
                log.warning("warm_up_failed", user_id=user_id, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                break
    return pipelines


class ModelLifecycle:
    """Loads the newest sound model version of ``workspace`` and keeps :attr:`served` current."""

    def __init__(self, workspace: Workspace, config: EndcapConfig, host: PluginHost, online: OnlineStore) -> None:
        self.workspace = workspace
        self.config = config
        self.host = host
        self.online = online
        self.served = served_version(load_newest_sound_model(workspace, host, online), online, config)
        """The model version being served; swapped whole by :meth:`reload`."""
        self.retired = RetiredModels()
        """Models switched away from, until the collector has released them (see :meth:`reload`)."""
        freeze_survivors()
        self._reload_lock = threading.Lock()
        self._refused: tuple[str, int] | None = None
        """The version last refused and the store's :meth:`_store_stamp` then: tried again only
        once the store changed (an ``endcap features`` run can make a refused version fit)."""

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        return self.served.pipelines

    @property
    def model(self) -> ServingModel:
        return self.served.model

    def reload(self, version: str | None = None) -> bool:
        """Load ``version`` (default: the registry's current) beside the serving one, then switch to
        it in one assignment. Monitors carry over (reloaded with the new version's state). A version
        that fails to load is refused, logged, and the serving one stays; returns whether it switched.

        The previous model is released once its last request is done: it is handed to
        :attr:`retired`, which collects it (with the collector's permanent generation opened, so
        reference cycles frozen at start-up are found too) and freezes what survives only once
        no retired model is left; :meth:`watch_registry` retries while a request still holds it."""
        with self._reload_lock:
            target = version or ModelRegistry(self.workspace.models).current()
            if target is None or target == self.model.version or self._refused == (target, self._store_stamp()):
                return False
            model = self._load(target)
            if model is None:
                return False
            previous = self.model
            self.served = served_version(model, self.online, self.config)
            self.retired.add(previous)
            log.info("model_switched", version=target, previous=previous.version)
            del previous, model  # this frame's references, before the collection
            self.retired.release()
            return True

    def _load(self, version: str) -> ServingModel | None:
        """``version`` loaded with the serving monitors, or ``None`` when it is refused (logged
        once per version) because it fails to load or does not fit the online store."""
        try:
            model = load_serving_model(
                self.workspace, self.host, self.online, version, monitors=self.model.components.monitors
            )
            check_model_against_store(model, self.online.user)
        except EndcapError as exc:
            if self._refused is None or self._refused[0] != version:
                log.error("reload_refused", version=version, serving=self.model.version, reason=str(exc))
            self._refused = (version, self._store_stamp())
            return None
        return model

    def _store_stamp(self) -> int:
        """When ``endcap features`` last finished (``materialized.json``'s modification time)."""
        try:
            return (self.workspace.feast / "materialized.json").stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def watch_registry(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Poll the registry's CURRENT pointer and :meth:`reload` when it moves (``endcap promote``)."""

        def poll() -> None:
            registry = ModelRegistry(self.workspace.models)
            while not stop.wait(interval):
                current = registry.current()
                if current is not None and current != self.model.version and self.reload(current):
                    continue  # (a version refused before is tried again once the store changed)
                if self.retired:
                    self.retired.release()  # a request held the previous model at the switch

        thread = threading.Thread(target=poll, name="endcap-model-watch", daemon=True)
        thread.start()
        return thread
