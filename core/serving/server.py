"""gRPC wiring: interceptors, health, reflection, start-up and graceful shutdown."""

from __future__ import annotations

import faulthandler
import signal
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import structlog
from endcap.config import AuthConfig, LimitsConfig, ServingConfig, TlsConfig
from endcap.errors import ConfigError, EndcapError, Unavailable
from endcap.logs import deadline_var, flush_logs, new_request_id, request_id_var
from endcap.serving.auth import AuthInterceptor, check_token_transport, load_callers
from endcap.serving.limits import AdmittedCalls
from endcap.serving.service import RecommendationService
from endcap.serving.servicer import SERVICE_NAME, RecommendationServicer, add_to_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = structlog.get_logger("endcap.server")

REQUEST_ID_HEADER = "x-request-id"
SIGNAL_POLL_SECONDS = 0.1


class ErrorInterceptor(grpc.ServerInterceptor):
    """Gives every call a request id, applies the concurrency limit, and turns exceptions into
    gRPC statuses.

    :class:`EndcapError` subclasses carry their own status and message; anything else is
    logged with its traceback and answered ``INTERNAL`` with the request id, never a traceback.

    The limit is applied as a call arrives (gRPC asks the interceptor for the call's handler on
    its polling thread): past ``limits.max_concurrent_requests`` calls waiting or running, the
    call gets a handler that answers ``RESOURCE_EXHAUSTED`` on a thread of its own, at once,
    instead of joining a queue. Health checks are exempt and run on the server's own threads,
    so probes are answered while the API's threads are busy.
    """

    def __init__(self, calls: AdmittedCalls, observe: Callable[[str, str, float], None] | None = None) -> None:
        self.calls = calls
        self.observe = observe
        self._handlers: dict[str, tuple[Any, Any]] = {}
        """(admitted, refused) handlers by method: built on a method's first call, then reused."""
        self._refusals = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="endcap-refuse")

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        handlers = self._handlers.get(method)
        if handlers is None:
            handler = continuation(handler_call_details)
            if handler is None or handler.unary_unary is None:
                return handler
            handlers = self._handlers[method] = self._build(handler, method)
        admitted, refused = handlers
        return refused if refused is not None and self.calls.full else admitted

    def _build(self, handler: Any, method: str) -> tuple[Any, Any]:
        limited = not method.startswith("/grpc.health.")
        behavior = self._wrap(handler.unary_unary, method, limited)
        if limited:
            behavior.experimental_thread_pool = self.calls  # type: ignore[attr-defined]

        def handler_for(behavior: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if not limited:
            return handler_for(behavior), None
        name = method.rsplit("/", 1)[-1]

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            if self.observe is not None:
                self.observe(name, grpc.StatusCode.RESOURCE_EXHAUSTED.name, 0.0)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(self.calls.refusal()))

        refuse.experimental_thread_pool = self._refusals  # type: ignore[attr-defined]
        return handler_for(behavior), handler_for(refuse)

    def _wrap(self, inner: Callable[..., Any], method: str, limited: bool) -> Callable[..., Any]:
        name = method.rsplit("/", 1)[-1]

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = _request_id(context)
            token = request_id_var.set(request_id)
            remaining = context.time_remaining()
            deadline = deadline_var.set(time.monotonic() + remaining if remaining is not None else None)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return inner(request, context)
            except EndcapError as exc:
                code = exc.status
                context.abort(exc.status, str(exc))
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("internal_error", method=method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}); see the server log")
            finally:
                request_id_var.reset(token)
                deadline_var.reset(deadline)
                if self.observe is not None and limited:
                    self.observe(name, code.name, time.perf_counter() - started)

        return wrapped


def _request_id(context: grpc.ServicerContext) -> str:
    """The caller's ``x-request-id`` when it is a usable id, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return new_request_id()


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    try:
        key, cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class Server:
    """A started gRPC server: health NOT_SERVING and calls UNAVAILABLE until :meth:`attach`.

    Bearer tokens (``auth``) without ``tls`` are refused unless ``allow_insecure_tokens`` (or
    ``auth.allow_insecure_tokens``) says so (see :func:`endcap.serving.auth.check_token_transport`)."""

    def __init__(
        self,
        host: str,
        port: int,
        serving: ServingConfig,
        limits: LimitsConfig | None = None,
        tls: TlsConfig | None = None,
        auth: AuthConfig | None = None,
        reuse_port: bool = False,
        allow_insecure_tokens: bool = False,
    ) -> None:
        check_token_transport(auth, tls, allow_insecure_tokens)
        limits = limits or LimitsConfig()
        self.serving = serving
        """``max_workers``, and the ``shutdown_*`` settings :meth:`wait_for_signal` follows."""
        self.calls = AdmittedCalls(limits.max_concurrent_requests, serving.max_workers)
        interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor(self.calls, self._observe_call)]
        if auth is not None:
            interceptors.insert(0, AuthInterceptor(load_callers(auth)))
        health_pool = futures.ThreadPoolExecutor(max_workers=serving.max_workers, thread_name_prefix="endcap-grpc")
        self.grpc_server = grpc.server(
            health_pool,  # health and reflection; the API's calls run on self.calls
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),  # several processes on one port
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.max_send_message_length", limits.max_message_bytes),
            ],
        )
        self.service: RecommendationService | None = None
        self.held = ""
        """Why the loaded service may not answer yet (see :meth:`hold`); empty when it may."""
        self.stop_signal = ""
        add_to_server(RecommendationServicer(self.current_service), self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc_server,
        )
        if tls is None:
            self.port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self.grpc_server.add_secure_port(f"{host}:{port}", server_credentials(tls))
        if self.port == 0:
            raise EndcapError(f"cannot listen on {host}:{port}; is another server using the port?")
        self.address = f"{host}:{self.port}"
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server.start()

    def _set_health(self, status: Any) -> None:
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def _observe_call(self, method: str, code: str, seconds: float) -> None:
        if self.service is not None:
            self.service.notify("on_call", method, code, seconds)

    def current_service(self) -> RecommendationService:
        service = self.service
        if service is None:
            raise Unavailable(f"not serving: {self.held}" if self.held else "the model is still loading; retry shortly")
        return service

    def hold(self, reason: str) -> None:
        """Stay ``NOT_SERVING``: calls are answered ``UNAVAILABLE`` with ``reason``."""
        self.held = reason

    def attach(self, service: RecommendationService) -> None:
        self.held = ""
        self.service = service
        self.calls.after_call = service.monitor_feed.drain  # monitors run once a call's answer is sent
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first, then let in-flight calls finish for up to ``grace`` seconds
        (default ``serving.shutdown_grace_seconds``)."""
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.serving.shutdown_grace_seconds if grace is None else grace).wait()
        if self.service is not None:
            self.service.monitor_feed.flush()  # the monitors see every call that was answered

    def handle_signals(self) -> None:
        """From now on SIGTERM and SIGINT ask for a graceful stop — also while the model is still
        loading, which then finishes and the server stops at once (see :meth:`wait_for_signal`
        for a stop that does not end)."""

        def on_signal(signum: int, frame: Any) -> None:
            # No logging and no Python locks here. A handler runs between two bytecodes of the main
            # thread, which may hold a lock the handler would need (the logger's; an Event's, when
            # a second signal comes as the first wakes the main thread), so taking one could deadlock.
            if not self.stop_signal:
                self.stop_signal = signal.Signals(signum).name
                # From the signal on, also while the model is still loading, a stop that does not
                # end the process in time writes every thread's stack and exits 1.
                faulthandler.dump_traceback_later(self.serving.shutdown_timeout_seconds, exit=True)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT (see :meth:`handle_signals`), then shut down gracefully.

        A call that never finishes (a plugin stuck in a call, say) would keep the process alive
        after the stop, and a plugin stuck while the model loads would keep it from stopping at
        all: ``serving.shutdown_timeout_seconds`` after the signal, the process writes every
        thread's stack to stderr and exits with status 1."""
        self.handle_signals()
        while not self.stop_signal:
            time.sleep(SIGNAL_POLL_SECONDS)
        log.info("shutdown_requested", signal=self.stop_signal)
        flush_logs()
        self.stop()
        log.info("stopped")
        flush_logs()  # before anything that might keep the process from exiting
