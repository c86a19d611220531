"""``endcap recommend`` (ask a running server) and ``endcap batch`` (every known user, offline)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from endcap.cli.commands import CommandTable, limit_blas_threads, load_host, positive_int, say
from endcap.errors import FailedPrecondition, InvalidArgument
from endcap.workspace import Workspace

DEFAULT_TARGET = "127.0.0.1:50051"


def cmd_recommend(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.serving.client import Connection, recommend

    connection = Connection(
        args.target,
        ca=Path(args.tls_ca) if args.tls_ca else None,
        cert=Path(args.tls_cert) if args.tls_cert else None,
        key=Path(args.tls_key) if args.tls_key else None,
        token=args.token or os.environ.get("ENDCAP_TOKEN"),
    )
    as_of = _as_of(args.as_of) if args.as_of else None
    response = recommend(connection, args.user_id, args.k, args.exclude or [], timeout=args.timeout, as_of=as_of)
    say(f"model {response.model_version}, request {response.request_id}")
    say(f"{'rank':>4}  {'item_id':<12} {'score':>8}  sources")
    for rank, item in enumerate(response.items, start=1):
        say(f"{rank:>4}  {item.item_id:<12} {item.score:>8.4f}  {','.join(item.sources)}")
    return 0


def _as_of(text: str) -> float:
    """``--as-of``: an ISO-8601 time (UTC unless it names a zone), in seconds since 1970."""
    import pandas as pd

    try:
        moment = pd.Timestamp(text)
    except ValueError as exc:
        raise InvalidArgument(f"--as-of: expected an ISO-8601 time such as 2026-12-05T10:00:00Z; got {text!r}") from exc
    return float((moment.tz_localize("UTC") if moment.tzinfo is None else moment).timestamp())


def cmd_batch(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.batch.output import output_kind

    limit_blas_threads()
    out = Path(args.out)
    kind = output_kind(out)
    started = time.perf_counter()
    if args.engine == "spark":
        rows, users, version = _spark_batch(args, workspace, out, kind)
    else:
        rows, users, version = _local_batch(args, workspace, out)
    say(
        f"wrote {rows} recommendations for {users} users (model {version}, {args.engine} engine) "
        f"to {out} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _spark_batch(args: argparse.Namespace, workspace: Workspace, out: Path, kind: str) -> tuple[int, int, str]:
    """``--engine spark``: rows written, users, model version."""
    from endcap.batch.spark import run
    from endcap.model_versions import ModelRegistry, load_catalog

    if kind != "dataset":
        raise InvalidArgument(
            f"--engine spark writes a partitioned Parquet directory; give --out a directory, not {out}"
        )
    registry = ModelRegistry(workspace.models)
    version = registry.current()
    if version is None:
        raise FailedPrecondition(f"no model in {workspace.models}; run 'endcap train' first")
    from endcap.config import load_config
    from endcap.serving.pipeline import resolve_k

    k = resolve_k(load_config(workspace.root).serving, args.k)
    catalog, _ = load_catalog(registry.path(version))
    rows = run(workspace.root, registry.path(version), catalog.user_ids.tolist(), k, out, args.master)
    return rows, catalog.n_users, version


def _local_batch(args: argparse.Namespace, workspace: Workspace, out: Path) -> tuple[int, int, str]:
    """``--engine local``: rows written, users, model version."""
    from endcap.batch.local import recommend_all
    from endcap.batch.output import write_frame
    from endcap.features.store import OnlineFeatures
    from endcap.serving.model import load_serving_model
    from endcap.serving.pipeline import Pipeline

    config, host = load_host(workspace)
    online = OnlineFeatures(workspace, config.feature_store)
    model = load_serving_model(workspace, host, online)
    pipeline = Pipeline(model, online.user, config.serving, budgets=False, read_users=online.users)
    frame = recommend_all(pipeline, pipeline.resolve_k(args.k), threads=args.threads, processes=args.processes)
    write_frame(frame, out)
    return len(frame), frame["user_id"].nunique(), model.version


def add_commands(commands: CommandTable) -> None:
    recommend = commands.add("recommend", cmd_recommend, "ask a running server for a user's recommendations")
    recommend.add_argument("--user-id", required=True)
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--exclude", nargs="*", metavar="ITEM_ID", help="item ids to leave out")
    recommend.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    recommend.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    recommend.add_argument(
        "--as-of", help="when the shopper is answered, ISO-8601 (default: the newest time the model's data knows)"
    )
    recommend.add_argument("--token", help="bearer token (default: $ENDCAP_TOKEN)")
    recommend.add_argument("--tls-ca", help="CA certificate: connect with TLS and check the server against it")
    recommend.add_argument("--tls-cert", help="client certificate, for mutual TLS")
    recommend.add_argument("--tls-key", help="client private key, for mutual TLS")

    batch = commands.add(
        "batch", cmd_batch, "top-k for every known user into CSV, Parquet, or a partitioned Parquet directory"
    )
    batch.add_argument(
        "--out", required=True, help="output: a .csv or .parquet file, or a directory (partitioned Parquet)"
    )
    batch.add_argument("--k", type=int, default=10)
    batch.add_argument("--engine", choices=("local", "spark"), default="local", help="where to run (default local)")
    batch.add_argument("--master", default="local[*]", help="Spark master URL for --engine spark (default local[*])")
    batch.add_argument(
        "--processes",
        type=positive_int,
        default=len(os.sched_getaffinity(0)),
        help="processes of the local engine, forked once the model is loaded, sharing its memory "
        "(default: the CPUs this process may use)",
    )
    batch.add_argument(
        "--threads", type=positive_int, default=1, help="threads of each local engine process (default 1)"
    )
