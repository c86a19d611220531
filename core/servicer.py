"""Protobuf ↔ domain translation for ``endcap.v1.RecommendationService``. No logic lives here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from endcap.logs import request_id_var
from endcap.service import EventInput, RecommendationService
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from google.protobuf.timestamp_pb2 import Timestamp

EVENT_TYPE_NAMES = {
    pb.EVENT_TYPE_PURCHASE: "purchase",
    pb.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    pb.EVENT_TYPE_VIEW: "view",
}


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    def __init__(self, current: Callable[[], RecommendationService]) -> None:
        self._current = current

    @property
    def service(self) -> RecommendationService:
        """The service loaded now (raises UNAVAILABLE while none is)."""
        return self._current()

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        answer = self.service.recommend(
            request_id=request_id_var.get(),
            user_id=request.user_id,
            k=request.k,
            exclude_item_ids=list(request.exclude_item_ids),
            context=dict(request.context),
            variant=request.variant if request.HasField("variant") else "",
        )
        response = pb.RecommendResponse(
            model_version=answer.model_version, request_id=answer.request_id, variant=answer.variant
        )
        add = response.items.add
        for item_id, score, sources in zip(answer.item_ids, answer.scores.tolist(), answer.sources, strict=True):
            add(item_id=item_id, score=score, sources=sources)
        return response

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
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

    def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.ServicerContext) -> pb.RecordEventsResponse:
        inputs = [
            EventInput(
                user_id=e.user_id,
                item_id=e.item_id,
                type=EVENT_TYPE_NAMES.get(e.type, f"<{e.type}>"),
                quantity=e.quantity,
                timestamp=e.timestamp.ToNanoseconds() / 1e9 if e.HasField("timestamp") else None,
                event_id=e.event_id,
            )
            for e in request.events
        ]
        return pb.RecordEventsResponse(accepted=self.service.record_events(inputs))

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.GetModelInfoResponse:
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
        )


def add_to_server(servicer: RecommendationServicer, server: Any) -> None:
    pb_grpc.add_RecommendationServiceServicer_to_server(servicer, server)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendationService"].full_name
