"""``endcap monitor report``: an HTML page of charts from the server's recorded metrics."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from endcap.errors import FailedPrecondition

RECORDING = Path("monitoring") / "metrics.jsonl"
Series = dict[str, list[tuple[float, float]]]


def read_recording(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FailedPrecondition(
            f"no recorded metrics at {path}; serve with the 'recorder' monitor enabled (it is by default) first"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _gauges(snapshots: list[dict[str, Any]], name: str, label: str | None = None) -> Series:
    series: Series = defaultdict(list)
    for snap in snapshots:
        for sample_name, labels, value in snap["samples"]:
            if sample_name == name:
                series[labels.get(label, name) if label else name].append((snap["time"], value))
    return dict(series)


def _quantile(bounds: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Linear interpolation inside the Prometheus bucket where quantile ``q`` falls."""
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    i = int(np.searchsorted(counts, rank))
    upper = bounds[min(i, len(bounds) - 1)]
    lower = bounds[i - 1] if i > 0 else 0.0
    if not np.isfinite(upper):
        return float(lower)
    below = counts[i - 1] if i > 0 else 0.0
    within = counts[i] - below
    return float(lower + (upper - lower) * ((rank - below) / within if within > 0 else 1.0))


def latency_percentiles(snapshots: list[dict[str, Any]], method: str = "Recommend") -> Series:
    """p50/p90/p99 of ``method`` per recording interval, in milliseconds."""
    series: Series = {"p50": [], "p90": [], "p99": []}
    previous: dict[float, float] = {}
    for snap in snapshots:
        buckets = {
            float(labels["le"]): value
            for name, labels, value in snap["samples"]
            if name == "endcap_request_duration_seconds_bucket" and labels.get("method") == method
        }
        if not buckets:
            continue
        bounds = np.array(sorted(buckets))
        counts = np.array([buckets[b] - previous.get(b, 0.0) for b in bounds])
        previous = buckets
        if counts[-1] <= 0:
            continue
        for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            series[key].append((snap["time"], 1000 * _quantile(bounds, counts, q)))
    return series


def _chart(path: Path, title: str, unit: str, series: Series, threshold: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 3.8), dpi=100)
    for name, points in sorted(series.items()):
        if points:
            times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
            # matplotlib plots datetimes through its registered date units; its stubs list numbers only.
            axes.plot(times, [v for _, v in points], label=name, linewidth=1.6)  # type: ignore[arg-type]
    if threshold is not None:
        axes.axhline(threshold, color="crimson", linestyle="--", linewidth=1, label=f"alarm at {threshold}")
    axes.set_title(title)
    axes.set_ylabel(unit)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if any(series.values()) or threshold is not None:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


SECTIONS = [
    (
        "latency.png",
        "Recommend latency",
        "ms",
        "How long storefronts wait: the median, the slowest 10% and the slowest 1% per interval.",
    ),
    (
        "drift.png",
        "Feature and score drift (PSI)",
        "PSI",
        "How far live features and scores are from training; above the red line the model is seeing "
        "data unlike what it learned from.",
    ),
    (
        "coverage.png",
        "Recommendation health",
        "share",
        "Catalogue coverage, concentration (Gini: 1 means a few items everywhere) and the cold-start share "
        "over the recent window.",
    ),
    (
        "hit_rate.png",
        "Online hit rate",
        "share",
        "Share of recommendation lists followed by a purchase of a shown item, per variant and model version.",
    ),
]


def write_report(workspace_root: Path, out: Path) -> Path:
    snapshots = read_recording(workspace_root / RECORDING)
    out.mkdir(parents=True, exist_ok=True)
    psi = _gauges(snapshots, "endcap_feature_psi", "feature")
    scores = _gauges(snapshots, "endcap_score_psi").get("endcap_score_psi")
    if scores:
        psi["final score"] = scores
    health = {
        "coverage": _gauges(snapshots, "endcap_recommendations_coverage").get("endcap_recommendations_coverage", []),
        "gini": _gauges(snapshots, "endcap_recommendations_gini").get("endcap_recommendations_gini", []),
        "cold-start share": _gauges(snapshots, "endcap_recommendations_cold_start_share").get(
            "endcap_recommendations_cold_start_share", []
        ),
    }
    hit_rate: Series = defaultdict(list)
    for snap in snapshots:
        for name, labels, value in snap["samples"]:
            if name == "endcap_online_hit_rate":
                hit_rate[f"{labels['variant']} / {labels['model_version']}"].append((snap["time"], value))
    charts = {
        "latency.png": (latency_percentiles(snapshots), None),
        "drift.png": (psi, 0.2),
        "coverage.png": (health, None),
        "hit_rate.png": (dict(hit_rate), None),
    }
    for file, title, unit, _ in SECTIONS:
        series, threshold = charts[file]
        _chart(out / file, title, unit, series, threshold)
    first, last = (
        datetime.fromtimestamp(s["time"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC") for s in (snapshots[0], snapshots[-1])
    )
    body = "".join(
        f'<section><h2>{title}</h2><p>{about}</p><img src="{file}" alt="{title}"></section>'
        for file, title, _, about in SECTIONS
    )
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Endcap monitoring</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}section{margin-bottom:2em}</style></head><body>"
        f"<h1>Endcap monitoring</h1><p>{len(snapshots)} recordings from {first} to {last}, "
        f"workspace <code>{workspace_root}</code>.</p>{body}</body></html>\n"
    )
    return page
