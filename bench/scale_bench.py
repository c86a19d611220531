"""Scale benchmark: ingest, features, train and batch on a synthetic log of many users.

    .venv/bin/python bench/scale_bench.py                       # 1M users x 100k products x 50M purchases
    .venv/bin/python bench/scale_bench.py --scale 0.1           # the same shape, a tenth of the size
    .venv/bin/python bench/scale_bench.py --skip-spark --workdir /big/disk/scale
    .venv/bin/python bench/scale_bench.py --scale 0.1 --from-step batch   # again on the same workspace

Generates a purchase log (user_id,item_id,timestamp) with power-law product popularity, per-user
staples and a few baskets per user over four weeks, then runs each step as the ``endcap``
command a user would run, each in its own process, with the **default** configuration (no
``endcap.yaml``), and prints wall time, peak memory (the largest proportional set size of the
step's process tree: shared pages counted once) and, for the batch steps, users per second as a table.

The reference row is the floor for a batch engine: implicit's own batched ``recommend`` (top
100, the model's ALS factors, every user) in a process of its own in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parent.parent
ENDCAP = str(Path(sys.executable).parent / "endcap")
REFERENCE_N = 100


def synthetic_log(users: int, items: int, purchases: int, seed: int = 0) -> pa.Table:
    """``purchases`` lines: each user has 2-8 baskets a few days apart within four weeks; half of
    a user's lines are their own staples, the rest drawn from a Zipf(1.1) popularity."""
    rng = np.random.default_rng(seed)
    baskets = rng.integers(2, 9, size=users)
    user = rng.choice(users, size=purchases, p=baskets / baskets.sum()).astype(np.int64)
    basket = (rng.random(purchases) * baskets[user]).astype(np.int64)
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1
    popular = rng.choice(items, size=purchases, p=popularity / popularity.sum())
    staples = rng.choice(items, size=(users, 5), p=popularity / popularity.sum())
    own = staples[user, rng.integers(0, 5, size=purchases)]
    item = np.where(rng.random(purchases) < 0.5, own, popular)
    start = np.datetime64("2024-03-01T08:00:00", "s")
    offset_days = (user % 7) + basket * (21 // np.maximum(baskets[user] - 1, 1))
    when = start + (offset_days * 86400 + (user % 36000)).astype("timedelta64[s]")
    return pa.table(
        {
            "user_id": pa.array(np.char.add("u", user.astype(str))),
            "item_id": pa.array(np.char.add("p", item.astype(str))),
            "timestamp": pa.array(when.astype("datetime64[s]")).cast(pa.timestamp("s", tz="UTC")),
        }
    )


def implicit_reference(workspace: Path) -> None:
    """implicit's ``recommend`` for every user of the current model's ALS, in batches of 10,000."""
    from implicit.cpu.als import AlternatingLeastSquares

    models = workspace / "models"
    version = (models / "CURRENT").read_text().strip()
    model = AlternatingLeastSquares.load(str(models / version / "components" / "candidates" / "als" / "als.npz"))
    users = model.user_factors.shape[0]
    started = time.perf_counter()
    for start in range(0, users, 10_000):
        ids = np.arange(start, min(start + 10_000, users))
        model.recommend(ids, None, N=REFERENCE_N, filter_already_liked_items=False)
    print(f"implicit recommend: {users} users, {users / (time.perf_counter() - started):.0f} users/s")


Result = tuple[str, float, float, int]
"""Step name, wall seconds, peak GiB, users answered (0: not a batch step)."""


def _memory(process: Any) -> int:
    """The process's proportional set size in bytes (its resident set without smaps_rollup)."""
    try:
        for line in Path(f"/proc/{process.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(process.memory_info().rss)


def step(name: str, command: list[str], results: list[Result], logs: Path, users: int = 0) -> None:
    """Run ``command``; record wall seconds and the peak memory of its whole process tree (the
    process and its descendants, e.g. forked batch workers or Spark's JVM and Python workers),
    sampled every second: the sum of their proportional set sizes, which count a page shared by
    several processes once (resident sets where the system does not report it). Reading a large
    process's ``smaps_rollup`` takes milliseconds: sampled every 0.2 s, it took a tenth of a core
    from the step it measured."""
    import psutil

    print(f"-- {name}: {' '.join(command)}", flush=True)
    output = logs / f"{name.split(',')[0].replace(' ', '-')}-{len(results)}.log"
    started = time.perf_counter()
    peak = 0
    with output.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(_memory(p) for p in tree if p.is_running()))
            except psutil.Error:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)  # returns as soon as the step ends
    seconds = time.perf_counter() - started
    text = output.read_text()
    if process.returncode != 0:
        print(text[-4000:])
        raise SystemExit(f"{name} failed ({output})")
    print("   " + "\n   ".join(text.strip().splitlines()[-1:]), flush=True)
    print(f"   {seconds:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
    results.append((name, seconds, peak / 2**30, users))


def same_rows(local: Path, spark: Path) -> str:
    """Whether two batch outputs hold the same users, items and ranks (scores to float32 rounding)."""
    import pandas as pd

    columns = ["user_id", "item_id", "rank", "score"]
    frames = [
        pd.read_parquet(path, columns=columns).sort_values(["user_id", "rank"], ignore_index=True)
        for path in (local, spark)
    ]
    if len(frames[0]) != len(frames[1]):
        return f"different: {len(frames[0]):,} rows locally, {len(frames[1]):,} on Spark"
    same = (frames[0][columns[:3]] == frames[1][columns[:3]]).all(axis=1)
    close = np.isclose(frames[0]["score"], frames[1]["score"], rtol=1e-6)
    if same.all() and close.all():
        return f"identical ({len(same):,} rows)"
    return f"different: {int((~same).sum()):,} of {len(same):,} rows differ in user, item or rank"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of 1M users / 100k products / 50M lines")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "scale-work"))
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument(
        "--from-step",
        choices=["generate", "ingest", "train", "batch"],
        default="generate",
        help="resume a run in --workdir (ingest: on the log already generated there, into a new workspace)",
    )
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--write-log", metavar="PATH", help=argparse.SUPPRESS)  # the generate step's own process
    parser.add_argument("--reference", metavar="WORKSPACE", help=argparse.SUPPRESS)  # the reference's own process
    options = parser.parse_args()
    users, items, purchases = (max(100, int(n * options.scale)) for n in (1_000_000, 100_000, 50_000_000))
    if options.write_log:
        pacsv.write_csv(synthetic_log(users, items, purchases), options.write_log)
        return 0
    if options.reference:
        implicit_reference(Path(options.reference))
        return 0
    workdir = Path(options.workdir)
    workspace = workdir / "ws"
    if options.from_step == "ingest":
        shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "endcap.yaml").unlink(missing_ok=True)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    results: list[Result] = []
    log = workdir / "log.csv"
    ws = ["--workspace", str(workspace)]
    if options.from_step == "generate":
        generate = [sys.executable, __file__, "--scale", str(options.scale), "--write-log", str(log)]
        step("generate log", generate, results, workdir)
    if options.from_step in ("generate", "ingest"):
        print(f"-- log: {purchases:,} lines, {log.stat().st_size / 2**30:.2f} GiB", flush=True)
        step("ingest", [ENDCAP, "ingest", str(log), *ws], results, workdir)
        step("features", [ENDCAP, "features", *ws], results, workdir)
    if options.from_step in ("generate", "ingest", "train"):
        step("train", [ENDCAP, "train", "--no-validate", *ws], results, workdir)
        # a model trained without validation is not promoted by the gate; the benchmark serves it anyway
        step("promote (unvalidated)", [ENDCAP, "promote", "--force", *ws], results, workdir)
    reference = [sys.executable, __file__, "--reference", str(workspace)]
    step(f"reference: implicit ALS recommend, top {REFERENCE_N}", reference, results, workdir, users)
    local = [ENDCAP, "batch", "--out", str(workdir / "out-local"), *ws]
    step("batch, local engine", local, results, workdir, users)
    if not options.skip_spark:
        spark = [ENDCAP, "batch", "--engine", "spark", "--master", options.master, "--out", str(workdir / "out-spark")]
        step("batch, Spark local", [*spark, *ws], results, workdir, users)

    print(
        f"\nScale benchmark: {users:,} users x {items:,} products x {purchases:,} purchases, {os.cpu_count()} cores\n"
    )
    if not options.skip_spark:
        print(f"Spark's rows against the local engine's: {same_rows(workdir / 'out-local', workdir / 'out-spark')}\n")
    print("| step | wall s | peak memory GiB | users/s |")
    print("|---|---:|---:|---:|")
    for name, seconds, peak, answered in results:
        rate = f"{answered / seconds:,.0f}" if answered else ""
        print(f"| {name} | {seconds:.1f} | {peak:.2f} | {rate} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
