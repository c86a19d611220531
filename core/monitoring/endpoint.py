"""``/metrics`` over HTTP: Prometheus's text exposition of one registry, on localhost unless told
otherwise, and behind a bearer token when one is configured (``metrics: {token_env: NAME}``)."""

from __future__ import annotations

import hmac
import os
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from endcap.config import MetricsConfig
from endcap.errors import ConfigError

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def metrics_token(config: MetricsConfig) -> bytes | None:
    """The token scrapes must present, from ``config.token_env``; ``None`` when none is configured."""
    if config.token_env is None:
        return None
    value = os.environ.get(config.token_env, "")
    if len(value) < 16:
        raise ConfigError(
            f"metrics.token_env: environment variable {config.token_env} must hold a token of at least "
            f"16 characters (it is {'unset' if config.token_env not in os.environ else 'too short'})"
        )
    return value.encode()


def require_token(app: WsgiApp, token: bytes) -> WsgiApp:
    """``app`` answering only requests with ``Authorization: Bearer <token>``; 401 otherwise."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scheme, _, presented = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token):
            return app(environ, start_response)
        body = b"a bearer token is required: send 'Authorization: Bearer <metrics token>'\n"
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded


def serve_metrics(registry: Any, host: str, port: int, token: bytes | None) -> int:
    """Serve ``registry`` at ``http://host:port/metrics`` on a daemon thread; returns the port."""
    from prometheus_client import make_wsgi_app

    app: WsgiApp = make_wsgi_app(registry)
    if token is not None:
        app = require_token(app, token)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another --metrics-port or --metrics-host"
        ) from exc
    threading.Thread(target=server.serve_forever, name="endcap-metrics", daemon=True).start()
    return int(server.server_port)
