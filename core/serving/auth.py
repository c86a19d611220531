"""Bearer-token authentication and roles for the gRPC API. Tokens are never logged."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import yaml
from endcap.config import ROLES, AuthConfig
from endcap.errors import ConfigError

SERVICE_PREFIX = "/endcap.v1.RecommendationService/"
REQUIRED_ROLE = {
    "Recommend": "recommend",
    "SimilarItems": "recommend",
    "RecordEvents": "record",
    "GetModelInfo": "admin",
}


@dataclass(frozen=True)
class Caller:
    name: str
    token: bytes
    roles: frozenset[str]


def load_callers(config: AuthConfig) -> list[Caller]:
    """The configured callers; an error naming the file or variable when they are malformed."""
    entries: list[dict[str, Any]] = []
    if config.tokens_file is not None:
        try:
            raw = yaml.safe_load(config.tokens_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"auth.tokens_file {config.tokens_file}: cannot read tokens: {exc}") from exc
        entries += list(raw.get("tokens", []) if isinstance(raw, dict) else [])
    if config.tokens_env is not None:
        value = os.environ.get(config.tokens_env)
        if value is None:
            raise ConfigError(f"auth.tokens_env: environment variable {config.tokens_env} is not set")
        for part in filter(None, (p.strip() for p in value.split(";"))):
            name, _, rest = part.partition(":")
            token, _, roles = rest.rpartition(":")
            entries.append({"name": name, "token": token, "roles": roles.split("+")})
    callers = []
    for position, entry in enumerate(entries):
        where = f"auth token #{position + 1} ({entry.get('name', '?')})"
        token = str(entry.get("token") or "")
        granted = {str(role) for role in entry.get("roles") or ()}
        if len(token) < 16:
            raise ConfigError(f"{where}: tokens must be at least 16 characters")
        if not granted or not granted <= set(ROLES):
            raise ConfigError(f"{where}: roles must be a non-empty subset of {', '.join(ROLES)}; got {sorted(granted)}")
        callers.append(Caller(str(entry.get("name") or f"caller{position + 1}"), token.encode(), frozenset(granted)))
    if not callers:
        raise ConfigError("auth is configured but no tokens were found; add tokens or remove the auth section")
    return callers


def check_token_transport(auth: AuthConfig | None, tls: object | None, allow_insecure_tokens: bool = False) -> None:
    """Refuse bearer tokens on a plaintext port unless explicitly allowed: anyone on the path
    could read a token and replay it."""
    if auth is None or tls is not None or allow_insecure_tokens or auth.allow_insecure_tokens:
        return
    raise ConfigError(
        "auth: bearer tokens are configured but the port has no TLS, so tokens would cross the network "
        "in clear text. Add a tls: section (cert_file, key_file) to endcap.yaml, or, on a network you "
        "trust, start with 'endcap serve --allow-insecure-tokens' (or set auth.allow_insecure_tokens: true)"
    )


def _denied(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a valid token, PERMISSION_DENIED without the method's role."""

    def __init__(self, callers: list[Caller]) -> None:
        self.callers = callers

    def identify(self, presented: bytes) -> Caller | None:
        found = None
        for caller in self.callers:  # compare against every token, in constant time each
            if hmac.compare_digest(presented, caller.token):
                found = caller
        return found

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        method = details.method
        if not method.startswith(SERVICE_PREFIX):
            return continuation(details)  # health and reflection stay open
        required = REQUIRED_ROLE.get(method[len(SERVICE_PREFIX) :], "admin")
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, presented = header.partition(" ") if isinstance(header, str) else ("", "", "")
        caller = self.identify(presented.strip().encode()) if scheme.lower() == "bearer" else None
        if caller is None:
            return _denied(
                grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required (metadata 'authorization: Bearer …')"
            )
        if required not in caller.roles and "admin" not in caller.roles:
            return _denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {caller.name!r} lacks the role {required!r} needed for {method.rsplit('/', 1)[-1]}",
            )
        return continuation(details)
