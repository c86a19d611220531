"""``recorder``: writes the server's metrics to ``<workspace>/monitoring/metrics.jsonl`` every
``interval_seconds`` — what ``endcap monitor report`` draws its charts from."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import endcap
import structlog
from pydantic import Field

log = structlog.get_logger("endcap.recorder")
RECORDING = Path("monitoring") / "metrics.jsonl"


def snapshot(registry: Any) -> dict[str, Any]:
    """All samples of ``registry`` now: ``{"time": …, "samples": [[name, labels, value], …]}``."""
    samples = [[sample.name, sample.labels, sample.value] for family in registry.collect() for sample in family.samples]
    return {"time": time.time(), "samples": samples}


class MetricsRecorderConfig(endcap.ComponentConfig):
    interval_seconds: float = Field(15.0, gt=0)


class MetricsRecorder(endcap.Monitor):
    Config = MetricsRecorderConfig
    config: MetricsRecorderConfig

    def __init__(self, name: str, config: MetricsRecorderConfig) -> None:
        super().__init__(name, config)
        self.path: Path | None = None
        self._stop = threading.Event()

    def load(self, context: endcap.ModelContext) -> None:
        if context.workspace is not None:
            self.path = context.workspace / RECORDING

    def register_metrics(self, registry: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._record, args=(registry,), name="endcap-recorder", daemon=True).start()

    def _record(self, registry: Any) -> None:
        assert self.path is not None
        while not self._stop.wait(self.config.interval_seconds):
            try:
                with self.path.open("a") as handle:
                    handle.write(json.dumps(snapshot(registry), separators=(",", ":")) + "\n")
            except Exception as exc:  # a full disk must not take the service down
                log.warning("recording_failed", path=str(self.path), error=f"{type(exc).__name__}: {exc}", exc_info=exc)


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(MetricsRecorder, type_name="recorder")
