"""Protobuf ↔ domain translation for ``endcap.v1.RecommendationService``. No logic lives here.

Each method is registered with an identity deserializer: its handler receives the request's
bytes and parses them itself, so a body that is not the request message is ``INVALID_ARGUMENT``
(gRPC would answer ``INTERNAL``, "Exception deserializing request"). Values a well-known type
cannot hold (a ``Timestamp`` with ``nanos`` outside 0..999,999,999) are ``INVALID_ARGUMENT``
too, naming the field, before anything converts them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from endcap.errors import InvalidArgument
from endcap.logs import request_id_var
from endcap.serving.requests import EventInput
from endcap.serving.service import RecommendationService
from endcap.v1 import recommendation_pb2 as pb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)
NANOS_PER_SECOND = 1_000_000_000

EVENT_TYPE_NAMES = {
    pb.EVENT_TYPE_PURCHASE: "purchase",
    pb.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    pb.EVENT_TYPE_VIEW: "view",
}


class RecommendationServicer:
    """The generated service's methods, each taking the request's bytes (see the module docstring)."""

    def __init__(self, current: Callable[[], RecommendationService]) -> None:
        self._current = current

    @property
    def service(self) -> RecommendationService:
        """The service loaded now (raises UNAVAILABLE while none is)."""
        return self._current()

    def Recommend(self, body: bytes, context: grpc.ServicerContext) -> pb.RecommendResponse:
        request = parse(pb.RecommendRequest, body)
        answer = self.service.recommend(
            request_id=request_id_var.get(),
            user_id=request.user_id,
            k=request.k,
            exclude_item_ids=list(request.exclude_item_ids),
            context=dict(request.context),
            variant=request.variant if request.HasField("variant") else "",
            as_of=timestamp_seconds(request.as_of, "as_of") if request.HasField("as_of") else math.nan,
        )
        response = pb.RecommendResponse(
            model_version=answer.model_version, request_id=answer.request_id, variant=answer.variant
        )
        add = response.items.add
        for item_id, score, sources in zip(answer.item_ids, answer.scores.tolist(), answer.sources, strict=True):
            add(item_id=item_id, score=score, sources=sources)
        return response

    def SimilarItems(self, body: bytes, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        request = parse(pb.SimilarItemsRequest, body)
        item_ids, scores, version = self.service.similar_items(
            request.item_id, request.k, list(request.exclude_item_ids)
        )
        source = self.service.config.serving.similar_items_source
        return pb.SimilarItemsResponse(
            items=[
                pb.RecommendedItem(item_id=i, score=float(s), sources=[source])
                for i, s in zip(item_ids, scores, strict=True)
            ],
            model_version=version,
            request_id=request_id_var.get(),
        )

    def RecordEvents(self, body: bytes, context: grpc.ServicerContext) -> pb.RecordEventsResponse:
        request = parse(pb.RecordEventsRequest, body)
        inputs = [
            EventInput(
                user_id=e.user_id,
                item_id=e.item_id,
                type=EVENT_TYPE_NAMES.get(e.type, f"<{e.type}>"),
                quantity=e.quantity,
                timestamp=timestamp_seconds(e.timestamp, f"events[{position}].timestamp")
                if e.HasField("timestamp")
                else None,
                event_id=e.event_id,
            )
            for position, e in enumerate(request.events)
        ]
        return pb.RecordEventsResponse(accepted=self.service.record_events(inputs))

    def GetModelInfo(self, body: bytes, context: grpc.ServicerContext) -> pb.GetModelInfoResponse:
        parse(pb.GetModelInfoRequest, body)  # no fields, but a body that is not one is refused
        manifest = self.service.model.manifest
        trained_at = Timestamp()
        trained_at.FromJsonString(manifest.trained_at.replace("+00:00", "Z"))
        host = self.service.host
        return pb.GetModelInfoResponse(
            model_version=manifest.version,
            trained_at=trained_at,
            data_fingerprint=manifest.data_fingerprint,
            training_rows=manifest.training_rows,
            users=manifest.users,
            items=manifest.items,
            plugins=[pb.PluginInfo(name=p.name, version=p.version, hooks=list(p.hooks)) for p in host.plugins],
            components=[f"{key} ({c.type})" for key, c in sorted(manifest.components.items())],
            repeat_share=manifest.repeat_share or 0.0,
            exclude_purchased=manifest.exclude_purchased,
        )


def parse(message_type: type[M], body: bytes) -> M:
    """``body`` parsed as ``message_type``; ``INVALID_ARGUMENT`` naming the message when it is not one."""
    try:
        return message_type.FromString(body)
    except Exception as exc:  # DecodeError, or whatever else the parser raises on hostile bytes
        name = message_type.DESCRIPTOR.full_name
        raise InvalidArgument(f"the request body is not a valid {name} ({type(exc).__name__}: {exc})") from exc


def timestamp_seconds(timestamp: Timestamp, where: str) -> float:
    """Seconds since the epoch of a ``google.protobuf.Timestamp``, read from its fields (its own
    conversions raise on values out of its range); ``nanos`` outside 0..999,999,999 is refused
    naming ``where``. The range of ``seconds`` is the service's to check."""
    if not 0 <= timestamp.nanos < NANOS_PER_SECOND:
        raise InvalidArgument(f"{where}.nanos must be between 0 and 999999999; got {timestamp.nanos}")
    return timestamp.seconds + timestamp.nanos / NANOS_PER_SECOND


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendationService"].full_name
RESPONSES: dict[str, type[Message]] = {
    "Recommend": pb.RecommendResponse,
    "SimilarItems": pb.SimilarItemsResponse,
    "RecordEvents": pb.RecordEventsResponse,
    "GetModelInfo": pb.GetModelInfoResponse,
}


def add_to_server(servicer: RecommendationServicer, server: Any) -> None:
    """Register every method of the service with an identity request deserializer (see the module
    docstring) and the response message's serializer."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=None, response_serializer=response.SerializeToString
        )
        for name, response in RESPONSES.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
