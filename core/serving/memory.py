"""The garbage collector around model reloads: freeze what start-up leaves alive, and release
each model switched away from, reference cycles included.

``gc.freeze()`` moves every live object into the collector's permanent generation, which full
collections skip: after ``import feast`` and a model load that saves a request ~100 ms now and
then. But a frozen object is never examined again, so a model frozen while it served, if its
objects form reference cycles (a memo holding a bound method of its component, a lambda over
``self``), would never be freed once replaced. :class:`RetiredModels` opens the permanent
generation again for the collection that frees it, and freezes once no retired model is left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
import weakref
from typing import Any

import structlog

log = structlog.get_logger("endcap.memory")


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


def return_freed_memory() -> None:
    """Hand the heap pages freed objects leave behind back to the operating system (glibc keeps
    them otherwise, and a freed model would still count in the resident size)."""
    if _trim is not None:
        _trim(0)


def freeze_survivors() -> None:
    """Collect everything unreachable, then move what is left into the permanent generation."""
    gc.collect()
    gc.freeze()


class RetiredModels:
    """Weak references to the models a reload switched away from, until they are released.

    A request that started before the switch keeps its model until it ends; :meth:`release`
    is called after the switch and again later (the registry watch does) until every retired
    model is gone. While one is still held, the permanent generation stays open: the ordinary
    collections free it, cycles included, as soon as its last request is done."""

    def __init__(self) -> None:
        self._models: list[tuple[str, weakref.ref[Any]]] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._models)

    def add(self, model: Any) -> None:
        """Track ``model`` (a :class:`~endcap.serving.model.ServingModel`) without keeping it alive."""
        with self._lock:
            self._models.append((str(getattr(model, "version", "?")), weakref.ref(model)))

    def release(self) -> bool:
        """Unfreeze, collect, and freeze again when no retired model survived; returns whether
        all are released. Costs one or two full collections (about 0.1 s each with Feast loaded)."""
        with self._lock:
            if not self._models:
                return True
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            held = [(version, ref) for version, ref in self._models if ref() is not None]
            released = len(self._models) - len(held)
            self._models = held
            if not held:
                # A model whose last request ended after the collection above was freed by its
                # reference count, but cycles among its parts (components, memos) were not:
                # collect once more before freezing, or they would be frozen for good.
                freeze_survivors()
            if released:
                return_freed_memory()
                log.info(
                    "models_released",
                    released=released,
                    still_in_use=[version for version, _ in held],
                    seconds=round(time.perf_counter() - started, 3),
                )
            return not held
