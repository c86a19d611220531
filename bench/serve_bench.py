"""Serving benchmark: Endcap against the bare gRPC floor and a hand-written Feast baseline.

    make demo && .venv/bin/python bench/serve_bench.py [--seconds 10] [--workspace .endcap]

Starts, each in its own process on a free port: a bare echo service (same sync server and
thread pool as Endcap), ``endcap serve --processes 2 --pin-cpus`` on the demo workspace (each
worker on a core of its own; ``--no-pin`` lets them move), and a hand-written handler that
reads the user and every candidate from Feast's SDK and then ranks — what a team would write
without Endcap. A separate process drives each with the same closed-loop load (1, 8 and 32
requests in flight, k = 10) and the script prints p50/p99 latency, requests/s and the ratios the
serving targets are stated in. Each server first takes ``--warmup`` seconds of load, as a server
that has been up a while would have (ALS and item-item answers of known users memoised, users'
parsed feature rows memoised, pages of the online store cached). ``--config FILE`` serves a copy
of the workspace with that ``endcap.yaml``, e.g. to measure without the memos::

    serving:
      user_memo_users: 0
    candidates:
      als: {type: als, memo_users: 0}
      item2item: {type: item2item, memo_users: 0}
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the three servers ----------------------------------------------------------------------------


def echo_server(port: int) -> None:
    """The gRPC floor: a unary method that returns its request, same server settings as Endcap."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def baseline_server(port: int, workspace: str) -> None:
    """Feast SDK for the user and each of ~200 candidates, then a numpy score: no Endcap."""
    import numpy as np
    from endcap.features.store import PRODUCT_FEATURES, USER_FEATURES, open_store
    from endcap.model_versions import ModelRegistry
    from endcap.workspace import Workspace

    ws = Workspace.resolve(workspace)
    store = open_store(ws)
    with np.load(ModelRegistry(ws.models).path() / "components/candidates/popularity/popularity.npz") as saved:
        popular = saved["ids"][:200]
    with np.load(ModelRegistry(ws.models).path() / "catalog.npz") as saved:
        candidates = [str(i) for i in saved["item_ids"][popular]]

    def recommend(request: bytes, context: object) -> bytes:
        user_id = request.decode()
        user = store.get_online_features(features=USER_FEATURES, entity_rows=[{"user_id": user_id}]).to_dict()
        rows = store.get_online_features(
            features=PRODUCT_FEATURES, entity_rows=[{"item_id": item} for item in candidates]
        ).to_dict()
        bought = set(user.get("item_ids", [None])[0] or [])
        purchases = np.nan_to_num(np.array(rows["purchases"], dtype=np.float64))
        scores = np.log1p(purchases) + np.array([5.0 if c in bought else 0.0 for c in candidates])
        return ",".join(candidates[i] for i in np.argsort(-scores)[:10]).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(recommend)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Baseline", {"Recommend": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def wait_ready(call: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            call()  # type: ignore[operator]
            return
        except grpc.RpcError:
            time.sleep(0.3)
    raise SystemExit("a server did not come up; is the demo workspace built (make demo)?")


# -- the load -------------------------------------------------------------------------------------


def drive(target: str, kind: str, in_flight: int, seconds: float, users: list[str], out: multiprocessing.Queue) -> None:
    """Closed loop: ``in_flight`` threads, each sending the next request when the last returns."""
    from endcap.v1 import recommendation_pb2 as pb
    from endcap.v1 import recommendation_pb2_grpc as pb_grpc

    def caller() -> object:
        """A call on a connection of its own: like separate storefront clients, and what lets
        several server processes on one port share the load."""
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        if kind == "endcap":
            stub = pb_grpc.RecommendationServiceStub(channel)
            return lambda user: stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
        method = channel.unary_unary("/bench.Echo/Echo" if kind == "echo" else "/bench.Baseline/Recommend")
        return lambda user: method(user.encode(), timeout=10)

    calls = [caller() for _ in range(in_flight)]
    for call in calls:  # warm up every connection
        for user in users[:10]:
            call(user)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        call = calls[seed]
        mine = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            call(rng.choice(users))
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    out.put(
        {
            "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "rps": len(latencies) / elapsed,
        }
    )


def measure(target: str, kind: str, in_flight: int, seconds: float, users: list[str]) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=drive, args=(target, kind, in_flight, seconds, users, queue))
    process.start()
    result = queue.get(timeout=seconds + 120)
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=str(ROOT / ".endcap"))
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measurement")
    parser.add_argument("--processes", type=int, default=2, help="endcap serve --processes (default 2)")
    parser.add_argument(
        "--no-pin", action="store_true", help="serve without --pin-cpus (workers free to move between cores)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load on each server before measuring (default 5)"
    )
    parser.add_argument(
        "--config",
        help="serve a copy of the workspace with this endcap.yaml (e.g. memo_users: 0 on als and item2item)",
    )
    options = parser.parse_args()
    if options.config:
        import shutil
        import tempfile

        copy = Path(tempfile.mkdtemp(prefix="endcap-bench-")) / "ws"
        shutil.copytree(options.workspace, copy, ignore=shutil.ignore_patterns("monitoring", "events"))
        shutil.copy(options.config, copy / "endcap.yaml")
        options.workspace = str(copy)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    multiprocessing.set_start_method("spawn")  # gRPC does not survive fork

    import pandas as pd

    users = sorted(pd.read_parquet(Path(options.workspace) / "data" / "interactions.parquet")["user_id"].unique())
    ports = {name: free_port() for name in ("echo", "endcap", "baseline")}
    processes = [
        multiprocessing.Process(target=echo_server, args=(ports["echo"],), daemon=True),
        multiprocessing.Process(target=baseline_server, args=(ports["baseline"], options.workspace), daemon=True),
    ]
    for process in processes:
        process.start()
    endcap = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "endcap"),
            "serve",
            "--workspace",
            options.workspace,
            "--port",
            str(ports["endcap"]),
            "--processes",
            str(options.processes),
            *([] if options.no_pin else ["--pin-cpus"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from endcap.v1 import recommendation_pb2 as pb
        from endcap.v1 import recommendation_pb2_grpc as pb_grpc

        channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
        wait_ready(lambda: channels["echo"].unary_unary("/bench.Echo/Echo")(b"x", timeout=2))
        wait_ready(
            lambda: pb_grpc.RecommendationServiceStub(channels["endcap"]).Recommend(
                pb.RecommendRequest(user_id="1"), timeout=5
            )
        )
        wait_ready(lambda: channels["baseline"].unary_unary("/bench.Baseline/Recommend")(b"1", timeout=10))
        if options.warmup > 0:  # servers that have run a while: caches filled, code paths warm
            for kind in ("echo", "endcap", "baseline"):
                measure(f"127.0.0.1:{ports[kind]}", kind, 8, options.warmup, users)
        results: dict[tuple[str, int], dict[str, float]] = {}
        for in_flight in CONCURRENCY:
            for kind in ("echo", "endcap", "baseline"):
                results[(kind, in_flight)] = measure(
                    f"127.0.0.1:{ports[kind]}", kind, in_flight, options.seconds, users
                )
    finally:
        endcap.terminate()
        endcap.wait(timeout=30)
        for process in processes:
            process.terminate()

    print(
        f"\nServing benchmark ({options.seconds:.0f} s per cell, {os.cpu_count()} cores, k = 10, "
        f"endcap serve --processes {options.processes}{'' if options.no_pin else ' --pin-cpus'})\n"
    )
    print("| in flight | service | p50 ms | p99 ms | req/s |")
    print("|---:|---|---:|---:|---:|")
    for (kind, in_flight), r in results.items():
        print(f"| {in_flight} | {kind} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} |")
    one = results[("endcap", 1)]
    print("\nTargets:")
    print(
        f"- Recommend p50 <= 1.5 ms at 1 in flight: {one['p50']:.2f} ms -> {'met' if one['p50'] <= 1.5 else 'NOT met'}"
    )
    print(f"- Recommend p99 <= 5 ms at 1 in flight: {one['p99']:.2f} ms -> {'met' if one['p99'] <= 5 else 'NOT met'}")
    ratios = {c: results[("endcap", c)]["rps"] / results[("echo", c)]["rps"] for c in CONCURRENCY}
    listed = ", ".join(f"{ratio:.2f}x at {c} in flight" for c, ratio in ratios.items())
    met = all(ratio >= 0.4 for ratio in ratios.values())
    print(f"- throughput >= 0.4x echo at every load: {listed} -> {'met' if met else 'NOT met'}")
    speedup = results[("baseline", 1)]["p50"] / one["p50"]
    print(f"- p50 >= 5x lower than the hand-written baseline: {speedup:.1f}x -> {'met' if speedup >= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
