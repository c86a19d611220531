"""A small client for the gRPC API (used by ``endcap recommend`` and the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from endcap.errors import EndcapError
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


class ClientError(EndcapError):
    """A call to the server failed; the message carries the gRPC status and details."""


@dataclass(frozen=True)
class Connection:
    """How to reach a server: plain, TLS (``ca``), or mutual TLS (``ca`` + ``cert`` + ``key``),
    with an optional bearer token."""

    target: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    def channel(self) -> grpc.Channel:
        if self.ca is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )
        return grpc.secure_channel(self.target, credentials)

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def recommend(
    connection: Connection,
    user_id: str,
    k: int = 10,
    exclude_item_ids: Sequence[str] = (),
    timeout: float = 5.0,
    as_of: float | None = None,
) -> pb.RecommendResponse:
    """``Recommend`` for ``user_id``; ``as_of`` (seconds since 1970) is when the shopper is answered."""
    with connection.channel() as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        request = pb.RecommendRequest(user_id=user_id, k=k, exclude_item_ids=list(exclude_item_ids))
        if as_of is not None:
            request.as_of.FromNanoseconds(round(as_of * 1e9))
        try:
            return stub.Recommend(request, timeout=timeout, metadata=connection.metadata())
        except grpc.RpcError as exc:
            raise ClientError(f"{connection.target}: {exc.code().name}: {exc.details()}") from exc
