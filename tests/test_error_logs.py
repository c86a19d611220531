"""Error lines are diagnosable: a real server with a plugin that raises writes the exception's
type, message and traceback into its JSON log lines; ``ENDCAP_LOG_FORMAT`` picks JSON or console
lines, and an error logged while handling an exception carries it in either."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import yaml
from conftest import log_events, run_cli, start_server, stop_server
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
        "candidates": {
            "replace_defaults": True,
            "popularity": {"type": "popularity"},
            "broken": {"type": "broken_source.BrokenCandidates"},
        },
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


LOGGING_SCRIPT = """
import structlog
from endcap.logs import configure_logging

configure_logging()
log = structlog.get_logger("endcap.check")
log.info("counted", items=3)
try:
    {}["shelf-7"]
except KeyError:
    log.error("lookup_failed", table="shelves")
log.error("no_exception_here")
"""


def run_logging_script(log_format: str | None, stderr: int | None = subprocess.PIPE) -> str:
    env = {key: value for key, value in os.environ.items() if key != "ENDCAP_LOG_FORMAT"}
    if log_format is not None:
        env["ENDCAP_LOG_FORMAT"] = log_format
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT], stderr=stderr, text=True, env=env, timeout=60, check=True
    )
    return done.stderr


def assert_json_lines(written: str) -> None:
    counted, failed, plain = [json.loads(line) for line in written.splitlines()]
    assert counted["event"] == "counted" and counted["items"] == 3 and counted["level"] == "info"
    assert "exception" not in counted
    assert failed["event"] == "lookup_failed" and failed["level"] == "error" and failed["table"] == "shelves"
    assert failed["exception"]["type"] == "KeyError" and failed["exception"]["message"] == "'shelf-7'"
    assert failed["exception"]["traceback"].startswith("Traceback (most recent call last):")
    assert failed["exception"]["traceback"].rstrip().endswith("KeyError: 'shelf-7'")
    assert plain["event"] == "no_exception_here" and "exception" not in plain and "exc_info" not in plain


def assert_console_lines(written: str) -> None:
    assert not any(line.startswith("{") for line in written.splitlines())
    assert re.search(r"^\S+Z \[info\s*\] counted\s+items=3$", written, re.MULTILINE)

    def line_start(event: str) -> int:
        return written.rindex("\n", 0, written.index(event)) + 1

    traceback_text = written[line_start("lookup_failed") : line_start("no_exception_here")]
    assert re.match(r"\S+Z \[error\s*\] lookup_failed\s+table=shelves\n", traceback_text)
    assert "Traceback (most recent call last):" in traceback_text
    assert traceback_text.rstrip().endswith("KeyError: 'shelf-7'")
    assert written.rstrip().endswith("no_exception_here")  # nothing after it: no exception to print


def test_json_format_writes_one_json_object_per_line_with_the_exception() -> None:
    assert_json_lines(run_logging_script("json"))


def test_console_format_writes_readable_lines_with_the_traceback_below() -> None:
    written = run_logging_script("console")
    assert_console_lines(written)
    assert "\x1b[" not in written  # no colour codes into a file or a pipe


def test_without_the_variable_a_pipe_gets_json_and_a_terminal_gets_console_lines() -> None:
    assert_json_lines(run_logging_script(None))
    controller, terminal = pty.openpty()
    try:
        run_logging_script(None, stderr=terminal)
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the other end is closed and everything read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    written = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode().replace("\r\n", "\n"))
    assert_console_lines(written)


def test_an_unknown_format_is_named_and_the_default_used() -> None:
    written = run_logging_script("xml")
    warning, *rest = written.splitlines()
    assert json.loads(warning) | {"timestamp": ""} == {
        "event": "unknown_log_format",
        "level": "warning",
        "variable": "ENDCAP_LOG_FORMAT",
        "value": "xml",
        "allowed": ["console", "json"],
        "timestamp": "",
    }
    assert_json_lines("\n".join(rest))


def test_the_command_line_follows_the_variable(tmp_path: Path) -> None:
    args = ("plugins", "--trace-hooks")
    as_json = run_cli(*args, workspace=tmp_path, env={"ENDCAP_LOG_FORMAT": "json"}).stderr.splitlines()
    assert any(json.loads(line)["event"] == "hook_call" for line in as_json)
    as_console = run_cli(*args, workspace=tmp_path, env={"ENDCAP_LOG_FORMAT": "console"}).stderr.splitlines()
    assert any(re.search(r"\[info\s*\] hook_call\s.*hook=endcap_register_components", line) for line in as_console)
    assert not any(line.startswith("{") for line in as_console)
