"""The event log with several writers, and writers that die: real processes, a real log file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import psutil
import pytest
import structlog
from conftest import RunningServer, start_server, stop_server
from endcap.data.events import EventLog
from endcap.release.retrain import purchases_since
from endcap.types import Event
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc

APPENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from endcap.data.events import EventLog
    from endcap.types import Event

    log, acknowledged, seconds = EventLog(Path(sys.argv[1])), open(sys.argv[2], "w"), float(sys.argv[3])
    n, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        batch = [Event("u1", f"item-{n}-{i}-" + "x" * 40, "purchase", 1, 1.0) for i in range(40)]
        log.append(batch)
        acknowledged.write(f"{n}\\n")
        acknowledged.flush()
        n += 1
    """
)

REPAIRER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from endcap.data.events import EventLog

    log, stop_at = EventLog(Path(sys.argv[1])), time.monotonic() + float(sys.argv[2])
    while time.monotonic() < stop_at:
        log.repair()
    """
)


def test_appends_while_another_process_repairs_lose_no_acknowledged_event(tmp_path: Path) -> None:
    path, acknowledged = tmp_path / "events.jsonl", tmp_path / "acknowledged.txt"
    seconds = "6"
    appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(acknowledged), seconds])
    repairer = subprocess.Popen([sys.executable, "-c", REPAIRER, str(path), seconds])
    assert appender.wait(timeout=120) == 0 and repairer.wait(timeout=120) == 0
    batches = acknowledged.read_text().split()
    logged = {e.item_id for e in EventLog(path).read()}
    expected = {f"item-{n}-{i}-" + "x" * 40 for n in batches for i in range(40)}
    assert len(expected) > 10_000, "the race ran long enough to mean something"
    lost = expected - logged
    print(f"acknowledged {len(expected)} events; lost {len(lost)}")
    assert not lost, f"{len(lost)} of {len(expected)} acknowledged events lost"
    assert not list(tmp_path.glob("events.jsonl.torn-*")), "nothing acknowledged was ever torn"


def test_an_append_after_a_torn_record_starts_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).append([Event("u1", "i1", "purchase", 1, 1.0)])
    killed_writer = subprocess.run(  # a writer that dies half-way through its record
        [
            sys.executable,
            "-c",
            f'import os; f = open({str(path)!r}, \'ab\'); f.write(b\'{{"user_id":"u1","ite\'); '
            "f.flush(); os.kill(os.getpid(), 9)",
        ],
        check=False,
    )
    assert killed_writer.returncode == -9
    EventLog(path).append([Event("u2", "i2", "purchase", 1, 2.0)])  # a sibling, which never repaired
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ["i1", "i2"]
    [torn] = tmp_path.glob("events.jsonl.torn-*")
    assert torn.read_bytes() == b'{"user_id":"u1","ite'


def test_reading_skips_and_reports_a_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("u1", "i1", "purchase", 1, 1.0)])
    with path.open("ab") as handle:  # a torn record glued to an acknowledged one, then garbage
        handle.write(
            b'{"user_id":"u1","ite{"user_id":"u1","item_id":"i2","type":"purchase","quantity":1,"timestamp":2.0}\n'
        )
        handle.write(b"\x00\x00not json at all\n")
    log.append([Event("u1", "i3", "purchase", 1, 3.0)])
    with structlog.testing.capture_logs() as logs:
        frame, end = purchases_since(log, 0)  # what endcap retrain reads
    assert frame["item_id"].tolist() == ["i1", "i2", "i3"]
    assert end == path.stat().st_size
    assert log.damaged_lines == 2
    [warning] = [entry for entry in logs if entry["event"] == "event_log_damaged_lines"]
    assert warning["log_level"] == "warning" and warning["skipped"] == 2


def test_a_retried_event_id_is_recorded_once_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from endcap.data.events import EventLog
        from endcap.types import Event
        log = EventLog(Path(sys.argv[1]))
        for n in range(200):
            log.append([Event("u1", f"i{n}", "purchase", 1, 1.0, event_id=f"id-{n}")])
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path)]) for _ in range(2)]
    assert all(writer.wait(timeout=120) == 0 for writer in writers)
    ids = [e.event_id for e in EventLog(path).read()]
    assert sorted(ids) == sorted(f"id-{n}" for n in range(200))
    assert EventLog(path).record([Event("u1", "i0", "purchase", 1, 1.0, event_id="id-0")]) == ()


def _serving(server: RunningServer) -> int:
    """How many workers have logged that they are serving."""
    return server.stderr_path.read_text().count('"event":"serving"')


def _workers(supervisor: subprocess.Popen[str]) -> list[psutil.Process]:
    return [p for p in psutil.Process(supervisor.pid).children() if p.is_running() and p.status() != "zombie"]


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_traffic_is_restarted_and_answers(synthetic_workspace: Path, tmp_path: Path) -> None:
    import shutil

    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_workspace, workspace)
    server = start_server(workspace, tmp_path, extra_args=("--processes", "2"))
    try:
        deadline = time.monotonic() + 60
        while len(_workers(server.process)) < 2 or _serving(server) < 2:  # both workers up
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = {p.pid for p in _workers(server.process)}
        victim = min(before)
        os.kill(victim, 9)
        answered = 0
        deadline = time.monotonic() + 90
        port = int(server.target.rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            workers = _workers(server.process)
            pids = {p.pid for p in workers}
            listening = [
                p
                for p in workers
                if p.pid not in before
                and any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in p.net_connections())
            ]
            with grpc.insecure_channel(server.target) as channel:  # traffic goes on meanwhile
                stub = pb_grpc.RecommendationServiceStub(channel)
                try:  # a connection the kernel had queued for the killed worker is reset
                    answered += len(stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10).items) > 0
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            if victim not in pids and len(pids) == 2 and listening and _serving(server) >= 3:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"no worker took the killed one's place: {pids}\n{server.stderr_path.read_text()}")
        # the other original worker dies too: until it is back (back-off, start-up), the
        # restarted one is the only process on the port, and it answers
        os.kill(next(iter(before - {victim})), 9)
        time.sleep(0.3)  # its listening socket is closed with it
        for _ in range(5):
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.RecommendationServiceStub(channel)
                assert stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=10).items
        assert answered > 0
    finally:
        code = stop_server(server)
    text = server.stderr_path.read_text()
    died = [json.loads(line) for line in text.splitlines() if '"worker_died"' in line]
    restarted = [json.loads(line) for line in text.splitlines() if '"worker_restarted"' in line]
    assert [(d["pid"], d["exit_code"]) for d in died][:1] == [(victim, -9)]
    assert restarted and restarted[0]["previous_pid"] == victim
    assert code == 0
