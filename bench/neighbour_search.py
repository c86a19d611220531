"""TIFU-KNN's neighbour search: the approximate search against the exact one.

    .venv/bin/python bench/neighbour_search.py                  # the demo and generated logs
    .venv/bin/python bench/neighbour_search.py --users 1000000  # add a log of that many users

For each log, the users' TIFU-KNN vectors (default settings) are searched both ways for the 300
nearest neighbours; for a seeded sample of users the table gives the share of the exact
neighbours the approximate search found (recall), the share of their summed cosine similarity it
captured, and the wall time of each search over every user (the exact one extrapolated from the
sample when the log is large).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
from endcap.data.demo import instacart_sample
from endcap.data.ingest import ingest, load_interactions
from endcap.data.training_data import build_training_data
from endcap.logs import configure_logging
from endcap.plugins.tifuknn import TifuKnnCandidatesConfig, personal_vectors
from endcap.plugins.user_neighbours import nearest_neighbours, unit_rows
from endcap.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_bench import synthetic_log

SAMPLE = 1000


def demo_log() -> pd.DataFrame:
    import tempfile

    workspace = Workspace.resolve(Path(tempfile.mkdtemp(prefix="endcap-neighbours-")))
    ingest(instacart_sample(), workspace)
    return load_interactions(workspace)


def generated_log(users: int) -> pd.DataFrame:
    frame = synthetic_log(users, max(100, users // 10), users * 50).to_pandas()
    frame["quantity"] = 1
    frame["basket_id"] = frame["user_id"] + "@" + frame["timestamp"].astype(str)  # a user's lines at one time
    return frame


def measure(name: str, log: pd.DataFrame, k: int) -> str:
    config = TifuKnnCandidatesConfig()
    data = build_training_data(log)
    vectors = personal_vectors(data.interactions, data.user_items.shape, config, config.group_decay)
    n = vectors.shape[0]
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, SAMPLE), replace=False))
    started = time.perf_counter()
    exact = nearest_neighbours(vectors, k, sample, search="exact")
    exact_seconds = (time.perf_counter() - started) * n / sample.size
    started = time.perf_counter()
    approximate = nearest_neighbours(vectors, k, search="approximate", dimensions=config.dimensions)[sample]
    approximate_seconds = time.perf_counter() - started
    pairs = zip(approximate, exact, strict=True)
    found = np.mean([np.intersect1d(a[a >= 0], e[e >= 0]).size / max((e >= 0).sum(), 1) for a, e in pairs])
    unit = unit_rows(vectors)
    similarity = (unit[sample] @ unit.T).toarray()
    rows = np.arange(sample.size)[:, None]
    captured = np.where(approximate >= 0, similarity[rows, np.maximum(approximate, 0)], 0).sum(axis=1)
    best = np.where(exact >= 0, similarity[rows, np.maximum(exact, 0)], 0).sum(axis=1)
    share = float(np.mean(captured[best > 0] / best[best > 0]))
    return (
        f"| {name} | {n:,} | {found:.3f} | {share:.3f} | {exact_seconds:.1f}"
        f"{' (extrapolated)' if sample.size < n else ''} | {approximate_seconds:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="*", default=[30_000, 100_000], help="generated logs' sizes")
    parser.add_argument("--k", type=int, default=TifuKnnCandidatesConfig().neighbours)
    args = parser.parse_args()
    configure_logging("WARNING")
    print(f"{args.k} neighbours per user; recall and similarity on {SAMPLE} sampled users\n", flush=True)
    print("| log | users | neighbour recall | similarity captured | exact s | approximate s |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    print(measure("demo (Instacart sample)", demo_log(), args.k), flush=True)
    for users in args.users:
        print(measure(f"generated, {users:,} users", generated_log(users), args.k), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
