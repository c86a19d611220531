"""Resident memory per model reload, for a large model.

    .venv/bin/python bench/reload_memory.py [--users 20000] [--items 30000] [--factors 256] [--reloads 12]

Builds (once; kept in ``--dir``) a workspace from a generated purchase log with two model versions
of the same configuration (ALS with ``--factors`` factors, item-item, repurchase, popularity,
the linear ranker), then loads the service the way ``endcap serve`` does and switches between
the two versions ``--reloads`` times, with a few requests after each, printing the process's
resident memory after every reload. A service that releases the model it switched away from
stays flat after the first two reloads; one that leaks grows by about the model's size each time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import yaml

ROOT = Path(__file__).resolve().parent.parent


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def build(directory: Path, users: int, items: int, factors: int) -> tuple[Path, list[str]]:
    """The workspace and its two versions; reused when ``directory`` already holds them."""
    from endcap.config import load_config
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features
    from endcap.model_versions import ModelRegistry
    from endcap.plugin_host import PluginHost
    from endcap.release.validated_training import train
    from endcap.testing import purchase_log
    from endcap.workspace import Workspace

    shape = f"{users}x{items}x{factors}"
    root = directory / shape
    registry = ModelRegistry(root / "ws" / "models")
    if len(registry.versions()) >= 2:
        return root / "ws", registry.versions()[-2:]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"building a workspace of {users} users x {items} products in {root} ...", flush=True)
    purchase_log(users=users, items=items, baskets=6, seed=1).to_csv(root / "log.csv", index=False)
    workspace = Workspace.resolve(root / "ws")
    ingest(root / "log.csv", workspace)
    build_features(workspace, load_interactions(workspace))
    config = {
        "candidates": {
            "replace_defaults": True,
            "popularity": {"type": "popularity"},
            "repurchase": {"type": "repurchase"},
            "als": {"type": "als", "factors": factors, "iterations": 3},
            "item2item": {"type": "item2item"},
        },
        "ranker": {"type": "linear"},
    }
    (workspace.root / "endcap.yaml").write_text(yaml.safe_dump(config))
    host = PluginHost(load_config(workspace.root))
    versions = [train(workspace, host, validate=False).version for _ in range(2)]
    return workspace.root, versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=30_000)
    parser.add_argument("--factors", type=int, default=256)
    parser.add_argument("--reloads", type=int, default=12)
    parser.add_argument("--verbose", action="store_true", help="show the server's info lines (models_released, ...)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/endcap-reload-bench"), help="where workspaces are kept")
    args = parser.parse_args()

    from endcap.config import load_config
    from endcap.features.store import OnlineFeatures
    from endcap.logs import configure_logging
    from endcap.plugin_host import PluginHost
    from endcap.serving.service import RecommendationService
    from endcap.workspace import Workspace

    configure_logging("INFO" if args.verbose else "ERROR")
    root, versions = build(args.dir, args.users, args.items, args.factors)
    workspace = Workspace(root)
    config = load_config(root)
    service = RecommendationService(workspace, config, PluginHost(config), OnlineFeatures(workspace))
    print(f"endcap from {sys.modules['endcap'].__file__}")
    print(f"model: {args.users} users x {args.items} products, ALS {args.factors} factors; versions {versions}")
    print(f"resident after start-up: {resident_mb():.0f} MB")
    figures = []
    for reload in range(args.reloads):
        started = time.perf_counter()
        service.reload(versions[reload % 2])
        seconds = time.perf_counter() - started
        for user in range(0, 200, 10):
            service.recommend("", f"u{user}", 10, (), {}, "")
        if service.__dict__.get("retired"):  # a service that tracks retired models: what the poll does
            service.retired.release()
        figures.append(resident_mb())
        print(f"reload {reload + 1:>3}: {figures[-1]:7.0f} MB resident  (switch {seconds:.2f} s)", flush=True)
    growth = (figures[-1] - figures[1]) / max(len(figures) - 2, 1)
    print(
        f"after reload 2: {figures[1]:.0f} MB; after reload {len(figures)}: {figures[-1]:.0f} MB; "
        f"{growth:+.1f} MB per reload"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
