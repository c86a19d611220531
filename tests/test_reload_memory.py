"""Model reloads leak nothing: a real server, two model versions promoted back and forth under
light traffic, and its resident memory after the last reload against after the second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import yaml
from conftest import prepared_workspace, start_server, stop_server
from endcap.config import load_config
from endcap.model_versions import ModelRegistry
from endcap.plugin_host import PluginHost
from endcap.release.validated_training import train
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc

RELOADS = 30
SHAPE = {"users": 3000, "items": 5000, "baskets": 6}
"""Big enough that a model left behind (factors, similarity matrices, memos) shows in the RSS."""
CONFIG = {
    "candidates": {
        "replace_defaults": True,
        "popularity": {"type": "popularity"},
        "repurchase": {"type": "repurchase"},
        "als": {"type": "als", "factors": 256, "iterations": 3},
        "item2item": {"type": "item2item"},
    },
    "ranker": {"type": "linear"},
    "serving": {"reload_poll_seconds": 0.2},
}


def resident_bytes(pid: int) -> int:
    """VmRSS of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_for_version(stub: pb_grpc.RecommendationServiceStub, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_version == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not switch to {version} within {timeout:.0f} s")


def light_traffic(target: str, stop: threading.Event, answered: list[int]) -> None:
    """A request every 20 ms, for known users, an unknown one and a similar-items call."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        turn = 0
        while not stop.wait(0.02):
            turn += 1
            try:
                if turn % 5 == 0:
                    stub.SimilarItems(pb.SimilarItemsRequest(item_id="i1", k=10), timeout=10)
                else:
                    stub.Recommend(pb.RecommendRequest(user_id=f"u{turn % 4000}", k=10), timeout=10)
                answered[0] += 1
            except grpc.RpcError:
                answered[1] += 1


def test_promoting_two_versions_back_and_forth_keeps_memory_flat(tmp_path: Path) -> None:
    workspace = prepared_workspace(tmp_path, **SHAPE)
    (workspace.root / "endcap.yaml").write_text(yaml.safe_dump(CONFIG))
    host = PluginHost(load_config(workspace.root))
    versions = [train(workspace, host, validate=False).version for _ in range(2)]
    registry = ModelRegistry(workspace.models)
    server = start_server(workspace.root, tmp_path)
    stop, answered = threading.Event(), [0, 0]
    traffic = threading.Thread(target=light_traffic, args=(server.target, stop, answered), daemon=True)
    traffic.start()
    resident: list[int] = []
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            for reload in range(RELOADS):
                version = versions[reload % 2]  # the server starts on versions[1]
                registry.set_current(version)
                wait_for_version(stub, version)
                time.sleep(0.5)  # the previous model's last requests finish; two polls go by
                resident.append(resident_bytes(server.process.pid))
    finally:
        stop.set()
        traffic.join(timeout=30)
        assert stop_server(server) == 0
    megabytes = [round(r / 2**20) for r in resident]
    print(f"\nresident MB after each reload: {megabytes}")
    assert answered[0] > 0 and answered[1] == 0, f"traffic: {answered[0]} answered, {answered[1]} failed"
    assert resident[-1] <= resident[1] * 1.07, (
        f"resident memory grew from {megabytes[1]} MB after the second reload to {megabytes[-1]} MB after "
        f"reload {RELOADS}: {megabytes}"
    )
