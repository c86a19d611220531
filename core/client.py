"""A small client for the gRPC API (used by ``endcap recommend`` and the tests)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from endcap.errors import EndcapError
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc


class ClientError(EndcapError):
    """A call to the server failed; the message carries the gRPC status and details."""


def recommend(
    target: str, user_id: str, k: int = 10, exclude_item_ids: Sequence[str] = (), timeout: float = 5.0
) -> pb.RecommendResponse:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        try:
            return stub.Recommend(
                pb.RecommendRequest(user_id=user_id, k=k, exclude_item_ids=list(exclude_item_ids)), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise ClientError(f"{target}: {exc.code().name}: {exc.details()}") from exc
