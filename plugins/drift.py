"""``drift``: population stability (PSI) of every ranker feature and of the final scores.

At training time the monitor stores reference histograms (deciles) of the ranking examples'
features and of the trained ranker's scores on them. While serving it keeps a sliding window of
the ranked candidates, computes PSI per feature and for the scores, exposes them as gauges
(``endcap_feature_psi``, ``endcap_score_psi``, ``endcap_drift_alarm``), and logs a structured
warning when a PSI crosses ``threshold`` (and again when it recovers).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import endcap
import numpy as np
import numpy.typing as npt
import structlog
from endcap.types import TrainingData
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field

log = structlog.get_logger("endcap.drift")
SCORES = "score"
EPSILON = 1e-4


def reference_histogram(values: np.ndarray, bins: int) -> tuple[list[float], list[float]]:
    """Interior bin edges at the quantiles of ``values`` and the share of values in each bin."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [], [1.0]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges.tolist(), shares(finite, edges).tolist()


def shares(values: np.ndarray, edges: np.ndarray) -> npt.NDArray[np.float64]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    return counts / max(int(counts.sum()), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftMonitorConfig(endcap.ComponentConfig):
    bins: int = Field(10, ge=2)
    window: int = Field(500, ge=1)
    """Requests in the sliding window."""
    rows_per_request: int = Field(50, ge=1)
    """Candidates sampled from each request (evenly through the ranked list)."""
    threshold: float = Field(0.2, gt=0)
    """PSI above which a feature counts as drifted (0.1 watch, 0.2 act is the usual reading)."""
    min_requests: int = Field(50, ge=1)
    """Requests in the window before PSI is reported."""
    check_seconds: float = Field(10.0, gt=0)
    """How often the alarm is re-evaluated (also on every ``/metrics`` scrape)."""
    features: list[str] | None = None
    """Watch only these features (default: all, and the scores)."""


class DriftMonitor(endcap.Monitor):
    Config = DriftMonitorConfig
    config: DriftMonitorConfig
    needs_ranking_examples = True

    def __init__(self, name: str, config: DriftMonitorConfig) -> None:
        super().__init__(name, config)
        self._lock = threading.Lock()
        self._window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=config.window)
        self._alarms: dict[str, bool] = {}
        self._seen = 0
        self._checker: threading.Thread | None = None
        self._samples: dict[int, np.ndarray] = {}
        self.names: tuple[str, ...] = ()
        self.edges: dict[str, np.ndarray] = {}
        self.expected: dict[str, np.ndarray] = {}

    def fit(self, data: TrainingData, directory: Path) -> Mapping[str, Any]:
        examples = data.ranking_examples
        reference: dict[str, Any] = {"names": [], "histograms": {}}
        if examples is not None:
            reference["names"] = list(examples.names)
            for column, name in enumerate(examples.names):
                reference["histograms"][name] = reference_histogram(examples.values[:, column], self.config.bins)
            if data.reference_scores is not None:
                reference["histograms"][SCORES] = reference_histogram(data.reference_scores, self.config.bins)
        (directory / "reference.json").write_text(json.dumps(reference))
        return {"features": len(reference["names"]), "scores": SCORES in reference["histograms"]}

    def load(self, context: endcap.ModelContext) -> None:
        reference = json.loads((context.directory / "reference.json").read_text())
        self.names = tuple(reference["names"])
        self.edges = {k: np.array(v[0]) for k, v in reference["histograms"].items()}
        self.expected = {k: np.array(v[1]) for k, v in reference["histograms"].items()}

    def on_request(self, record: endcap.RequestRecord) -> None:
        if record.features is None or record.candidate_scores is None or record.features.names != self.names:
            return
        rows = record.features.values.shape[0]
        if rows == 0:
            return
        sample = self._samples.get(rows)
        if sample is None:  # evenly through the ranked list; the same few hundred sizes recur
            sample = np.linspace(0, rows - 1, min(rows, self.config.rows_per_request)).astype(np.int64)
            self._samples[rows] = sample
        with self._lock:
            self._window.append((record.features.values[sample], record.candidate_scores[sample]))
            self._seen += 1
            if self._checker is None:
                self._start_checker()

    def _start_checker(self) -> None:
        """PSI over the window costs milliseconds, so the alarm is re-evaluated every
        ``check_seconds`` on a thread of its own, never inside a request."""

        def run() -> None:
            checked = 0
            while True:
                time.sleep(self.config.check_seconds)
                if self._seen == checked:
                    continue
                checked = self._seen
                try:
                    self.check()
                except Exception as exc:  # a monitor never takes the service down
                    log.warning("drift_check_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

        self._checker = threading.Thread(target=run, name=f"endcap-drift-{self.name}", daemon=True)
        self._checker.start()

    def current(self) -> dict[str, float]:
        """PSI per feature name and for ``score``; empty until ``min_requests`` are in the window."""
        with self._lock:
            window = list(self._window)
        if len(window) < self.config.min_requests:
            return {}
        values = np.vstack([w[0] for w in window])
        scores = np.concatenate([w[1] for w in window])
        result = {}
        watched = set(self.config.features) if self.config.features is not None else set(self.names)
        for column, name in enumerate(self.names):
            if name in self.edges and name in watched:
                result[name] = psi(self.expected[name], shares(values[:, column], self.edges[name]))
        if SCORES in self.edges:
            result[SCORES] = psi(self.expected[SCORES], shares(scores, self.edges[SCORES]))
        return result

    def check(self) -> dict[str, float]:
        values = self.current()
        for name, value in values.items():
            drifted = value > self.config.threshold
            if drifted != self._alarms.get(name, False):
                self._alarms[name] = drifted
                if drifted:
                    log.warning("drift_alarm", feature=name, psi=round(value, 4), threshold=self.config.threshold)
                else:
                    log.info("drift_recovered", feature=name, psi=round(value, 4), threshold=self.config.threshold)
        return values

    def register_metrics(self, registry: Any) -> None:
        monitor = self

        class Collector:
            def collect(self) -> Any:
                values = monitor.check()
                features = GaugeMetricFamily(
                    "endcap_feature_psi", "PSI of a ranker feature vs training", labels=["feature"]
                )
                alarms = GaugeMetricFamily(
                    "endcap_drift_alarm", "1 when PSI is above the threshold", labels=["feature"]
                )
                for name, value in values.items():
                    if name != SCORES:
                        features.add_metric([name], value)
                    alarms.add_metric([name], float(value > monitor.config.threshold))
                yield features
                yield alarms
                if SCORES in values:
                    yield GaugeMetricFamily(
                        "endcap_score_psi", "PSI of the final scores vs training", value=values[SCORES]
                    )

        registry.register(Collector())


@endcap.hookimpl
def endcap_register_components(registry: Any) -> None:
    registry.add(DriftMonitor, type_name="drift")
