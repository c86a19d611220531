"""What each feature provider, each candidate source and the candidate budget add to the
pipeline, and what each opt-in provider would add: ``endcap evaluate``'s test target, once per
variant of the configuration.

    .venv/bin/python bench/accuracy_ablations.py [--workspace DIR] [--target test|validation]

The workspace's log (default: the demo, ingested into a temporary workspace when the workspace
has none) is split once; each variant is the workspace's configuration with one change layered
on it (a provider or a source dropped with ``name: null``, another ``candidates_per_source``, more
label baskets), rebuilt from the training lines and scored on the same users. The table gives
Recall@10 and NDCG@10 with their 95 % bootstrap intervals and the paired difference in NDCG@10
against the full configuration (negative: the dropped part was helping).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from endcap.config import CONFIG_FILE, EndcapConfig, layer_on_defaults, read_config_file
from endcap.data.demo import instacart_sample
from endcap.data.ingest import ingest, load_interactions
from endcap.evaluation.evaluate import evaluate_target, split_for
from endcap.evaluation.intervals import paired_interval
from endcap.logs import configure_logging
from endcap.plugin_host import PluginHost
from endcap.workspace import Workspace

OPT_IN_FEATURES = ("cart_position",)
"""Built-in feature providers that are not defaults: each measured as an addition."""


def variants(base: EndcapConfig) -> dict[str, dict[str, Any]]:
    """Name → the change layered on the workspace's configuration."""
    changes: dict[str, dict[str, Any]] = {"full configuration": {}}
    changes.update({f"without features.{name}": {"features": {name: None}} for name in base.features})
    changes.update(
        {
            f"with features.{name}": {"features": {name: {"type": name}}}
            for name in OPT_IN_FEATURES
            if name not in base.features
        }
    )
    changes.update(
        {
            f"without candidates.{name}": {"candidates": {name: None}}
            for name in base.candidates
            if name not in (base.serving.fallback_source, base.serving.similar_items_source)
        }
    )
    per_source = base.serving.candidates_per_source
    changes.update(
        {
            f"candidates_per_source {n}": {"serving": {**base.serving.model_dump(), "candidates_per_source": n}}
            for n in (per_source // 2, per_source * 2)
        }
    )
    changes["training.label_baskets 3"] = {"training": {"label_baskets": 3}}
    if "tifuknn" in base.candidates:
        tifuknn = base.candidates["tifuknn"].model_dump(exclude_none=True)
        changes["tifuknn approximate neighbour search"] = {
            "candidates": {"tifuknn": {**tifuknn, "neighbour_search": "approximate"}}
        }
        changes["tifuknn keep_per_user 1000"] = {"candidates": {"tifuknn": {**tifuknn, "keep_per_user": 1000}}}
    return changes


def configured(raw: dict[str, Any], change: dict[str, Any]) -> EndcapConfig:
    layered = dict(raw)
    for section, value in change.items():
        if isinstance(value, dict) and section in ("features", "candidates"):
            layered[section] = {**(raw.get(section) or {}), **value}
        else:
            layered[section] = value
    return EndcapConfig.model_validate(layer_on_defaults(layered))


def workspace_with_log(path: Path | None) -> Workspace:
    if path is not None and Workspace.resolve(path).interactions.exists():
        return Workspace.resolve(path)
    workspace = Workspace.resolve(Path(tempfile.mkdtemp(prefix="endcap-ablations-")))
    ingest(instacart_sample(), workspace)
    return workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None, help="a workspace with an ingested log")
    parser.add_argument("--target", choices=("test", "validation"), default="test")
    parser.add_argument("--only", default="", help="run the full configuration and the variants whose name has this")
    args = parser.parse_args()
    configure_logging("WARNING")
    workspace = workspace_with_log(args.workspace)
    config_file = workspace.root / CONFIG_FILE
    raw = read_config_file(config_file) if config_file.exists() else {}
    split = split_for(load_interactions(workspace), args.target, "last-basket")
    print(f"log: {workspace.interactions}; target: {args.target} basket; protocol: last-basket", flush=True)
    print("| Variant | Recall@10 | NDCG@10 | ΔNDCG@10 vs full (paired) | features + training |")
    print("|---|---:|---:|---:|---:|")
    full: np.ndarray | None = None
    for name, change in variants(configured(raw, {})).items():
        if args.only not in name and name != "full configuration":
            continue
        config = configured(raw, change)
        result = evaluate_target(workspace, config, PluginHost(config), split, baselines=False)
        pipeline = result.systems["pipeline"]
        per_user = np.asarray(result.per_user["pipeline"])
        full = per_user if full is None else full
        delta = "—" if per_user is full else paired_interval(per_user, full).text(signed=True)
        print(
            f"| {name} | {pipeline.intervals['recall@10'].text()} | {pipeline.intervals['ndcg@10'].text()} | {delta} "
            f"| {result.train_seconds:.1f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
