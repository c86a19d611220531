"""Errors that know how to present themselves: a gRPC status for the server, a message for the CLI."""

from __future__ import annotations

import grpc


class EndcapError(Exception):
    """Base class of every error Endcap raises on purpose.

    The message says what is wrong and what to do; ``status`` is the gRPC status code the
    server's error interceptor answers with.
    """

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(EndcapError):
    """The caller sent something Endcap cannot accept."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(EndcapError):
    """A named thing (item, model version, file) does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(EndcapError):
    """The workspace is not ready for this step (e.g. no model trained yet)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(EndcapError):
    """The service cannot answer yet (still loading) or any more (shutting down); retry."""

    status = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(EndcapError):
    """A limit was reached (too many calls in flight, too large a request); the message names it."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(EndcapError):
    """The caller's deadline passed before the answer was ready; the work stopped there."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class ConfigError(FailedPrecondition):
    """``endcap.yaml`` or a plugin's configuration is invalid."""


class PluginError(FailedPrecondition):
    """A plugin could not be loaded, validated or configured; the message names the plugin."""


class InputFileError(InvalidArgument):
    """A bad input file, located by path, line and column (both 1-based; 0 when unknown)."""

    def __init__(self, path: str, line: int, column: int, reason: str) -> None:
        self.path, self.line, self.column, self.reason = path, line, column, reason
        super().__init__(f"{path}:{line}:{column}: {reason}")
