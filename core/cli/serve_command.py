"""``endcap serve``: one gRPC server process, or ``--processes N`` of them under the supervisor."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from endcap.cli.commands import CommandTable, limit_blas_threads, load_host, positive_int
from endcap.cli.cpu_pinning import pin_to, worker_cpus
from endcap.cli.supervisor import serve_processes
from endcap.workspace import Workspace


def cmd_serve(args: argparse.Namespace, workspace: Workspace) -> int:
    import structlog
    from endcap.serving.server import Server

    if args.processes > 1:
        return serve_processes(args, workspace)
    cpu = worker_cpus(1)[0] if args.pin_cpus else args.cpu
    if cpu is not None:
        pin_to(cpu)
    import faulthandler

    faulthandler.enable()  # a crash in native code, or SIGABRT from the parent, writes every thread's stack
    limit_blas_threads()
    config, host = load_host(workspace)
    server = Server(
        args.host,
        args.port,
        config.serving,
        config.limits,
        config.tls,
        config.auth,
        args.reuse_port,
        allow_insecure_tokens=args.allow_insecure_tokens,
    )
    server.handle_signals()
    log = structlog.get_logger("endcap.server")
    log.info("listening", address=server.address, health="NOT_SERVING")
    try:
        from endcap.features.store import OnlineFeatures
        from endcap.serving.service import RecommendationService

        service = RecommendationService(workspace, config, host, OnlineFeatures(workspace, config.feature_store))
    except BaseException:
        server.stop(grace=0)
        raise
    if args.metrics_port is not None:
        port = service.expose_metrics(args.metrics_host, args.metrics_port)
        log.info("metrics", address=f"http://{args.metrics_host}:{port}/metrics")
    if not hold_until_store_matches(server, service, config.serving.reload_poll_seconds or 1.0):
        server.wait_for_signal()
        return 0
    server.attach(service)
    if config.serving.reload_poll_seconds > 0:
        service.watch_registry(config.serving.reload_poll_seconds, threading.Event())
    log.info("serving", address=server.address, model_version=service.model.version)
    server.wait_for_signal()
    return 0


def hold_until_store_matches(server: Any, service: Any, interval: float) -> bool:
    """Keep the server ``NOT_SERVING`` while the model and the online store disagree (logged with
    the reason once per change), checking again every ``interval`` seconds (a newly promoted model
    is loaded first). Returns whether they match; ``False`` when a stop signal came first."""
    import structlog
    from endcap.errors import FailedPrecondition
    from endcap.features.coverage import check_model_against_store

    log = structlog.get_logger("endcap.server")
    reason = ""
    while not server.stop_signal:
        service.reload()
        try:
            check_model_against_store(service.model, service.online.user)
            return True
        except FailedPrecondition as exc:
            if str(exc) != reason:
                reason = str(exc)
                log.error("not_serving", reason=reason, health="NOT_SERVING")
            server.hold(reason)
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and not server.stop_signal:
            time.sleep(0.05)
    return False


def add_commands(commands: CommandTable) -> None:
    serve = commands.add("serve", cmd_serve, "serve the gRPC API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics")
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics listens on (default 127.0.0.1: this machine only; 0.0.0.0 for a remote scraper)",
    )
    serve.add_argument(
        "--allow-insecure-tokens",
        action="store_true",
        help="serve bearer tokens (auth: in endcap.yaml) on a port without tls: (tokens cross the network in clear)",
    )
    serve.add_argument(
        "--processes", type=positive_int, default=1, help="server processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--pin-cpus",
        action="store_true",
        help="keep each server process on a core of its own (for a host the server has to itself)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
