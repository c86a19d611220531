"""Every call into a plugin component on the request path, isolated: one that raises or overruns
its ``budget_ms`` is dropped from this request (recorded, counted and logged), and the request is
still served."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import structlog
from endcap.types import Component

log = structlog.get_logger("endcap.pipeline")

T = TypeVar("T")


class ComponentCalls:
    """Runs component calls and keeps the count of those dropped, per component, since start.

    ``budgets`` says whether a component that overruns its ``budget_ms`` is dropped: on for
    serving, off for batch jobs, where an answer must not depend on how busy the machine was."""

    def __init__(self, budgets: bool = True) -> None:
        self.budgets = budgets
        self.failures: Counter[str] = Counter()
        """Calls dropped per component (raised or overran its budget) since start."""

    def run(self, key: str, component: Component, errors: dict[str, str], call: Callable[[], T]) -> T | None:
        """Run one component call; a call that raises or overruns its budget counts as failed:
        the failure is recorded under ``key``, counted, logged, and ``None`` returned."""
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:  # one component never fails the request
            self.drop(key, errors, f"{type(exc).__name__}: {exc}", exc)
            return None
        budget = getattr(component.config, "budget_ms", None) if self.budgets else None
        if budget is None:
            return result
        elapsed = (time.perf_counter() - started) * 1000.0
        if elapsed <= budget:
            return result
        self.drop(key, errors, f"over budget: {elapsed:.1f} ms > {budget:g} ms")
        return None

    def drop(self, key: str, errors: dict[str, str], reason: str, error: BaseException | None = None) -> None:
        """Record that component ``key`` was dropped from this request, and why (with the
        traceback in the log when it raised ``error``)."""
        errors[key] = reason
        self.failures[key] += 1
        log.warning("component_dropped", component=key, reason=reason, total=self.failures[key], exc_info=error)
