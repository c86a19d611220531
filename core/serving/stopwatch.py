"""Stage timings of one request, and the OpenTelemetry spans made from them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from endcap.types import Query

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


class Stopwatch:
    """Stage timings of one request: each lap records its end; durations are worked out once."""

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self._origin = time.perf_counter_ns()
        self._laps: list[tuple[str, int]] = []

    def lap(self, stage: str) -> None:
        self._laps.append((stage, time.perf_counter_ns()))

    @property
    def ms(self) -> dict[str, float]:
        """Milliseconds per stage."""
        ends = [self._origin] + [end for _, end in self._laps]
        return {stage: (end - ends[i]) / 1e6 for i, (stage, end) in enumerate(self._laps)}

    @property
    def spans(self) -> list[tuple[str, int, int]]:
        """(stage, start, end) in epoch nanoseconds, for tracing."""
        shift = self.started_ns - self._origin
        ends = [self._origin] + [end for _, end in self._laps]
        return [(stage, ends[i] + shift, end + shift) for i, (stage, end) in enumerate(self._laps)]


def tracer() -> Tracer:
    """Endcap's OpenTelemetry tracer."""
    from opentelemetry import trace

    return trace.get_tracer("endcap")


def trace_request(tracer: Tracer, watch: Stopwatch, request_id: str, query: Query, model_version: str) -> None:
    """One ``endcap.recommend`` span with a child per stage, from the stopwatch's own times."""
    from opentelemetry import trace

    spans = watch.spans
    end = spans[-1][2] if spans else time.time_ns()
    root = tracer.start_span("endcap.recommend", start_time=watch.started_ns)
    root.set_attributes(
        {
            "endcap.request_id": request_id,
            "endcap.k": query.k,
            "endcap.variant": query.variant,
            "endcap.model_version": model_version,
        }
    )
    context = trace.set_span_in_context(root)
    for stage, start, stop in spans:
        tracer.start_span(f"endcap.{stage}", context=context, start_time=start).end(end_time=stop)
    root.end(end_time=end)
