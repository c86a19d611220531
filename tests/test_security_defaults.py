"""Security defaults that do not surprise: tokens never on a plaintext port unless allowed,
``/metrics`` on localhost (and behind a token when configured), and a per-workspace salt for the
pseudonymous user key instead of a public default."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
import yaml
from conftest import ENDCAP, free_port, log_events, start_server, stop_server
from endcap.config import AuthConfig, EndcapConfig, ServingConfig
from endcap.errors import ConfigError
from endcap.serving.server import Server
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc

TOKEN = "storefront-token-0123456789"
METRICS_TOKEN = "scraper-token-0123456789"
TOKENS = {"ENDCAP_TEST_TOKENS": f"storefront:{TOKEN}:recommend+admin", "ENDCAP_TEST_METRICS_TOKEN": METRICS_TOKEN}


def with_config(synthetic_workspace: Path, tmp_path: Path, config: dict[str, object]) -> Path:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    (workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
    return workspace


def test_a_server_refuses_tokens_on_a_plaintext_port() -> None:
    auth = AuthConfig(tokens_env="ENDCAP_TEST_TOKENS")
    with pytest.raises(ConfigError) as refused:
        Server("127.0.0.1", free_port(), ServingConfig(max_workers=2), auth=auth)
    message = str(refused.value)
    assert "clear text" in message and "tls:" in message and "--allow-insecure-tokens" in message


def test_endcap_serve_refuses_tokens_on_a_plaintext_port_and_says_what_to_do(
    synthetic_workspace: Path, tmp_path: Path
) -> None:
    workspace = with_config(synthetic_workspace, tmp_path, {"auth": {"tokens_env": "ENDCAP_TEST_TOKENS"}})
    command = [ENDCAP, "serve", "--workspace", str(workspace), "--port", str(free_port())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, **TOKENS})
    except subprocess.TimeoutExpired:
        pytest.fail("endcap serve started with tokens on a plaintext port")
    assert done.returncode == 1
    assert "endcap serve: error: auth: bearer tokens are configured but the port has no TLS" in done.stderr
    assert "--allow-insecure-tokens" in done.stderr and "tls:" in done.stderr


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections() if not c.raddr}


def test_allowed_tokens_and_metrics_behind_a_token_of_their_own(synthetic_workspace: Path, tmp_path: Path) -> None:
    config = {
        "auth": {"tokens_env": "ENDCAP_TEST_TOKENS"},
        "metrics": {"token_env": "ENDCAP_TEST_METRICS_TOKEN"},
    }
    workspace = with_config(synthetic_workspace, tmp_path, config)
    metrics_port = free_port()
    extra = ("--allow-insecure-tokens", "--metrics-port", str(metrics_port))
    server = start_server(workspace, tmp_path, env=TOKENS, extra_args=extra)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            metadata = [("authorization", f"Bearer {TOKEN}")]
            assert stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10, metadata=metadata).items
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(url, timeout=5)
        assert anonymous.value.code == 401 and anonymous.value.headers["WWW-Authenticate"] == "Bearer"
        wrong = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})  # a gRPC caller's token
        with pytest.raises(urllib.error.HTTPError) as rejected:
            urllib.request.urlopen(wrong, timeout=5)
        assert rejected.value.code == 401
        scrape = urllib.request.Request(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert b"endcap_requests_total" in urllib.request.urlopen(scrape, timeout=5).read()
    finally:
        assert stop_server(server) == 0


def test_metrics_listen_on_localhost_and_user_keys_use_the_workspace_salt(
    synthetic_workspace: Path, tmp_path: Path
) -> None:
    workspace = with_config(synthetic_workspace, tmp_path, {})
    metrics_port = free_port()
    server = start_server(workspace, tmp_path, extra_args=("--host", "0.0.0.0", "--metrics-port", str(metrics_port)))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            assert stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10).items
        sockets = listening(server.process.pid)
        assert ("127.0.0.1", metrics_port) in sockets, sockets
        assert ("0.0.0.0", metrics_port) not in sockets  # the gRPC port is on every address; /metrics is not
    finally:
        assert stop_server(server) == 0
    salt_file = workspace / "secrets" / "user_key_salt"
    assert salt_file.exists(), "the workspace's salt was generated on first use"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip()
    assert len(salt) == 64
    lines = [e for e in log_events(server.stderr_path.read_text()) if e.get("event") == "recommend"]
    assert lines[-1]["user_key"] == hashlib.sha256(f"{salt}:u1".encode()).hexdigest()[:16]
    assert lines[-1]["user_key"] != hashlib.sha256(b"endcap:u1").hexdigest()[:16]  # the old public default


def test_the_salt_is_generated_once_per_workspace_and_kept(tmp_path: Path) -> None:
    from endcap.serving.secrets import workspace_secret

    first = workspace_secret(tmp_path, "user_key_salt")
    assert workspace_secret(tmp_path, "user_key_salt") == first
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert workspace_secret(tmp_path / "other", "user_key_salt") != first
    assert not [p for p in (tmp_path / "secrets").iterdir() if p.name != "user_key_salt"]  # no partial left


def test_metrics_host_option_binds_where_asked(synthetic_workspace: Path) -> None:
    from endcap.features.store import OnlineFeatures
    from endcap.plugin_host import PluginHost
    from endcap.serving.service import RecommendationService
    from endcap.workspace import Workspace

    config = EndcapConfig()
    service = RecommendationService(
        Workspace(synthetic_workspace), config, PluginHost(config), OnlineFeatures(Workspace(synthetic_workspace))
    )
    port = service.expose_metrics("0.0.0.0", 0)
    assert ("0.0.0.0", port) in listening(os.getpid())
    assert b"endcap_" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
