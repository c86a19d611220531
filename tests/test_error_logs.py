"""Error lines are diagnosable: a real server with a plugin that raises writes the exception's
type, message and traceback into its JSON log lines."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import yaml
from conftest import log_events, start_server, stop_server
from endcap.logs import configure_logging
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc

BROKEN_SOURCE = """
import endcap


class IndexUnreadable(Exception):
    pass


class BrokenCandidates(endcap.CandidateGenerator):
    def generate(self, query, user, n):
        raise IndexUnreadable(f"candidates of {query.user_id} are unreadable")

    def similar(self, item_index, n):
        raise IndexUnreadable(f"neighbours of item {item_index} are unreadable")
"""


def lines_with(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in events if line.get("event") == name]


def test_a_plugin_that_raises_is_logged_with_type_message_and_traceback(
    synthetic_workspace: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    (tmp_path / "broken_source.py").write_text(BROKEN_SOURCE)
    config = {
        "candidates": {"popularity": {"type": "popularity"}, "broken": {"type": "broken_source.BrokenCandidates"}},
        "serving": {"similar_items_source": "broken"},
    }
    (workspace / "endcap.yaml").write_text(yaml.safe_dump(config))
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    server = start_server(workspace, tmp_path, env={"PYTHONPATH": path})
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.SimilarItems(pb.SimilarItemsRequest(item_id="i1", k=3), timeout=10)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10).items  # the source dropped
    finally:
        assert stop_server(server) == 0
    events = log_events(server.stderr_path.read_text())

    [internal] = lines_with(events, "internal_error")
    assert "exc_info" not in internal
    exception = internal["exception"]
    assert exception["type"] == "broken_source.IndexUnreadable"
    assert exception["message"].startswith("neighbours of item ") and exception["message"].endswith(" are unreadable")
    assert exception["traceback"].startswith("Traceback (most recent call last):")
    assert "broken_source.py" in exception["traceback"] and "in similar" in exception["traceback"]
    assert exception["traceback"].rstrip().endswith(f"broken_source.IndexUnreadable: {exception['message']}")
    assert internal["request_id"] and internal["level"] == "error"

    dropped = [line for line in lines_with(events, "component_dropped") if line["component"] == "broken"]
    assert dropped, "the failing source's drop is logged"
    assert dropped[0]["exception"]["type"] == "broken_source.IndexUnreadable"
    assert re.fullmatch(r"candidates of u\d+ are unreadable", dropped[0]["exception"]["message"])
    assert "in generate" in dropped[0]["exception"]["traceback"]


def test_the_console_renderer_prints_the_traceback_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_lines=False)
    try:
        log = structlog.get_logger("endcap.test")
        try:
            raise KeyError("missing-column")
        except KeyError:
            log.exception("internal_error", method="/x")
        written = capsys.readouterr().err
    finally:
        configure_logging()
    assert "internal_error" in written and "Traceback" in written
    assert "KeyError" in written and "missing-column" in written
