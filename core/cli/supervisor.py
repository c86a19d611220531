"""``endcap serve --processes N``: N server processes share the port (SO_REUSEPORT), so a Python
server uses N cores.

Worker i serves metrics on ``--metrics-port + i``; SIGTERM and SIGINT are passed on to all. A
worker that dies while serving (a crash, the OOM killer, ``kill -9``) is logged and started again
after a back-off (:data:`RESTART_BACKOFF_SECONDS`); one that exits with an error in its first
minute (a start-up error) stops them all instead, so a bad configuration is not retried forever.
A worker still running :data:`WORKER_KILL_MARGIN_SECONDS` after its own shutdown timeout (one
that does not answer signals at all) gets SIGABRT, which writes its stacks, then SIGKILL.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from endcap.cli.cpu_pinning import worker_cpus
from endcap.workspace import Workspace

WORKER_KILL_MARGIN_SECONDS = 2.0
RESTART_BACKOFF_SECONDS = (1.0, 30.0)
"""A dead worker is restarted after the first figure, doubling after each quick death, up to the second."""
HEALTHY_AFTER_SECONDS = 60.0
"""A worker that ran this long before dying is restarted after the shortest back-off again."""


def serve_processes(args: argparse.Namespace, workspace: Workspace) -> int:
    """Run ``args.processes`` servers (module docstring) until they stop; their exit status."""
    import structlog
    from endcap.config import load_config

    give_up_after = load_config(workspace.root).serving.shutdown_timeout_seconds + WORKER_KILL_MARGIN_SECONDS
    supervisor = Supervisor(worker_commands(args, workspace), give_up_after, structlog.get_logger("endcap.supervisor"))
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    return supervisor.run()


def worker_commands(args: argparse.Namespace, workspace: Workspace) -> list[list[str]]:
    """The command line of each worker: ``endcap serve`` with one process, the parent's options
    that apply to a worker, its own metrics port and, with ``--pin-cpus``, its own core."""
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
    return commands


def _security_flags(args: argparse.Namespace) -> list[str]:
    """The ``serve`` options a worker of ``--processes`` takes from its parent's command line."""
    return ["--metrics-host", args.metrics_host] + (["--allow-insecure-tokens"] if args.allow_insecure_tokens else [])


@dataclass
class Worker:
    """One server process and what its restarts need to know."""

    command: list[str]
    process: subprocess.Popen[bytes]
    started: float
    backoff: float = RESTART_BACKOFF_SECONDS[0]
    restarted: bool = False
    restart_at: float | None = None
    """When a worker that died is started again; ``None`` while it is not waiting to be."""


class Supervisor:
    """Starts the workers, restarts those that die while serving, passes signals on to them."""

    def __init__(self, commands: list[list[str]], give_up_after: float, log: Any) -> None:
        now = time.monotonic()
        self.workers = [Worker(command, subprocess.Popen(command), now) for command in commands]
        self.give_up_after = give_up_after
        self.log = log
        self.stop_by: float | None = None
        """Set by the first stop signal: workers still running then are ended (:func:`end_unresponsive`)."""

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [worker.process for worker in self.workers]

    def restarts_pending(self) -> bool:
        return any(worker.restart_at is not None for worker in self.workers)

    def forward(self, signum: int, frame: object) -> None:
        """Pass a stop signal on to every running worker; they get ``give_up_after`` seconds."""
        for process in running(self.processes()):
            process.send_signal(signum)
        self.stop_by = self.stop_by or time.monotonic() + self.give_up_after

    def run(self) -> int:
        """Watch the workers until all have stopped; the highest exit status (128 + N for a
        worker killed by signal N). A worker that died before the stop, its restart pending,
        does not set it."""
        while running(self.processes()) or (self.stop_by is None and self.restarts_pending()):
            time.sleep(0.2)
            if self.stop_by is not None:
                if time.monotonic() > self.stop_by:
                    end_unresponsive(self.processes())
                    break
                continue
            self.check(time.monotonic())
        codes = [worker.process.wait() for worker in self.workers if worker.restart_at is None] or [0]
        return max(128 - code if code < 0 else code for code in codes)

    def check(self, now: float) -> None:
        """Schedule the restart of workers that died, start those whose back-off is over, and
        stop everything when a worker failed to start."""
        for i, worker in enumerate(self.workers):
            code = worker.process.poll()
            if code is not None and worker.restart_at is None:
                if code >= 0 and not worker.restarted and now - worker.started < HEALTHY_AFTER_SECONDS:
                    self.log.error("worker_failed_to_start", worker=i, pid=worker.process.pid, exit_code=code)
                    self.forward(signal.SIGTERM, None)  # a start-up error (its message is above): not retried
                    break
                if now - worker.started >= HEALTHY_AFTER_SECONDS:
                    worker.backoff = RESTART_BACKOFF_SECONDS[0]
                worker.restart_at = now + worker.backoff
                self.log.error(
                    "worker_died", worker=i, pid=worker.process.pid, exit_code=code, restart_in_seconds=worker.backoff
                )
                worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_SECONDS[1])
            elif worker.restart_at is not None and now >= worker.restart_at:
                previous = worker.process.pid
                worker.restart_at, worker.process = None, subprocess.Popen(worker.command)
                worker.started, worker.restarted = now, True
                self.log.warning("worker_restarted", worker=i, pid=worker.process.pid, previous_pid=previous)


def running(processes: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    return [process for process in processes if process.poll() is None]


def end_unresponsive(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGABRT to the workers still running (``faulthandler`` writes their stacks), then SIGKILL,
    each given ``WORKER_KILL_MARGIN_SECONDS`` to take effect."""
    for escalation in (signal.SIGABRT, signal.SIGKILL):
        for process in running(processes):
            process.send_signal(escalation)
        ended_by = time.monotonic() + WORKER_KILL_MARGIN_SECONDS
        while running(processes) and time.monotonic() < ended_by:
            time.sleep(0.1)
