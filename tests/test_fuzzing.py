"""Property-based attacks on every entry point: the ingest command and the running server.

No input may end in a traceback, an INTERNAL status or a crashed server; each test counts the
cases it sent and the status codes they got (printed with -s) so the figures can be reported.
``ENDCAP_FUZZ_EXAMPLES`` sets the cases per test (default 300); ``bench/fuzz_rpcs.py`` runs the
RPC tests with 10,000 each.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from conftest import free_port
from endcap.cli.main import main
from endcap.config import EndcapConfig, ServingConfig
from endcap.data.ingest import ingest, read_purchase_log
from endcap.errors import InputFileError
from endcap.features.store import OnlineFeatures
from endcap.plugin_host import PluginHost
from endcap.serving.server import Server
from endcap.serving.service import RecommendationService
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from endcap.workspace import Workspace
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CASES: Counter[str] = Counter()
CODES: dict[str, Counter[str]] = {}
"""Status codes received, by RPC (printed when the module's server stops)."""
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EXAMPLES = int(os.environ.get("ENDCAP_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
huge_text = st.one_of(text, st.just(""), st.just(" "), st.builds(lambda n: "x" * n, st.integers(250, 20_000)))
int32 = st.integers(-(2**31), 2**31 - 1)
ids = st.one_of(st.sampled_from(["u1", "u2", "i1", "i0", "stranger"]), huge_text)


@pytest.fixture(scope="module")
def target(synthetic_workspace: Path) -> Iterator[str]:
    config = EndcapConfig()
    workspace = Workspace(synthetic_workspace)
    server = Server("127.0.0.1", free_port(), ServingConfig(max_workers=4), config.limits)
    server.attach(RecommendationService(workspace, config, PluginHost(config), OnlineFeatures(workspace)))
    yield server.address
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, "the server survived every case"
    server.stop(grace=1)
    print(f"\nfuzz cases per entry point: {dict(CASES)}")
    for rpc, codes in sorted(CODES.items()):
        print(f"status codes for {rpc}: {dict(sorted(codes.items()))}")


@pytest.fixture(scope="module")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as shared:
        yield shared


def outcome(
    call: object, request: object, metadata: list[tuple[str, object]] | None = None, rpc: str = ""
) -> grpc.StatusCode:
    code = grpc.StatusCode.OK
    try:
        call(request, timeout=10, metadata=metadata or [])  # type: ignore[operator]
    except grpc.RpcError as exc:
        code = exc.code()
        assert code not in FORBIDDEN, f"{code}: {exc.details()}"
    finally:
        if rpc:
            CODES.setdefault(rpc, Counter())[code.name if code is not None else "NONE"] += 1
    return code


@FUZZ
@given(
    user_id=ids,
    k=st.one_of(int32, st.integers(-2, 1002)),
    exclude=st.lists(ids, max_size=30),
    context=st.dictionaries(text, huge_text, max_size=8),
    variant=st.one_of(st.none(), text),
    request_id=st.one_of(st.binary(max_size=64), text),
)
def test_recommend(
    target: str, user_id: str, k: int, exclude: list[str], context: dict, variant: object, request_id: object
) -> None:
    CASES["Recommend"] += 1
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        request = pb.RecommendRequest(user_id=user_id, k=k, exclude_item_ids=exclude + exclude[:3], context=context)
        if variant is not None:
            request.variant = variant  # type: ignore[assignment]
        key = "x-request-id-bin" if isinstance(request_id, bytes) else "x-request-id"
        value = (
            request_id
            if isinstance(request_id, bytes)
            else "".join(c for c in request_id if c in string.printable[:94])
        )
        code = outcome(stub.Recommend, request, [(key, value)], rpc="Recommend")
        if not user_id.strip() or not (0 <= k <= 1000):
            assert code == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(item_id=ids, k=int32, exclude=st.lists(ids, max_size=10))
def test_similar_items(target: str, item_id: str, k: int, exclude: list[str]) -> None:
    CASES["SimilarItems"] += 1
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        request = pb.SimilarItemsRequest(item_id=item_id, k=k, exclude_item_ids=exclude)
        outcome(stub.SimilarItems, request, rpc="SimilarItems")


event = st.builds(
    lambda user, item, kind, quantity, seconds: pb.Event(
        user_id=user, item_id=item, type=kind, quantity=quantity, timestamp={"seconds": seconds}
    ),
    ids,
    ids,
    st.integers(-5, 10),  # unknown enum values included
    int32,
    st.integers(-62135596800, 253402300799),
)


@FUZZ
@given(events=st.lists(event, max_size=12))
def test_record_events(target: str, events: list[pb.Event], synthetic_workspace: Path) -> None:
    CASES["RecordEvents"] += 1
    log = synthetic_workspace / "events" / "events.jsonl"
    before = log.read_bytes() if log.exists() else b""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        code = outcome(stub.RecordEvents, pb.RecordEventsRequest(events=events), rpc="RecordEvents")
    after = log.read_bytes() if log.exists() else b""
    if code != grpc.StatusCode.OK:
        assert after == before, "a refused batch writes nothing"
    else:
        assert after.count(b"\n") - before.count(b"\n") == len(events)


@FUZZ
@given(garbage=st.binary(max_size=200))
def test_model_info_ignores_garbage_metadata(target: str, garbage: bytes) -> None:
    CASES["GetModelInfo"] += 1
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        assert (
            outcome(stub.GetModelInfo, pb.GetModelInfoRequest(), [("x-request-id-bin", garbage)], rpc="GetModelInfo")
            == grpc.StatusCode.OK
        )


INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), -(2**63) + 1, 2**63 - 1, 2**63 - 2, -62135596801, 253402300800, -1, 0]),
)
INT32 = st.one_of(int32, st.sampled_from([-(2**31), -1, 999_999_999, 1_000_000_000, 2**31 - 1]))
any_timestamp = st.builds(Timestamp, seconds=INT64, nanos=INT32)
"""Timestamps over the whole range of their fields: most are out of ``Timestamp``'s own range."""


def _in_range(stamp: Timestamp) -> bool:
    return 0 <= stamp.nanos <= 999_999_999 and 0 <= stamp.seconds + stamp.nanos / 1e9 < 4_102_444_800


@FUZZ
@given(stamps=st.lists(any_timestamp, min_size=1, max_size=4), valid_before=st.integers(0, 3))
def test_record_events_refuses_out_of_range_timestamps_naming_the_event(
    channel: grpc.Channel, stamps: list[Timestamp], valid_before: int
) -> None:
    CASES["RecordEvents (timestamps)"] += 1
    events = [pb.Event(user_id="u1", item_id="i1", type=pb.EVENT_TYPE_VIEW) for _ in range(valid_before)]
    events += [pb.Event(user_id="u1", item_id="i1", type=pb.EVENT_TYPE_VIEW, timestamp=s) for s in stamps]
    stub = pb_grpc.RecommendationServiceStub(channel)
    try:
        stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=10)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    CODES.setdefault("RecordEvents", Counter())[code.name] += 1
    bad = {f"events[{valid_before + i}].timestamp" for i, s in enumerate(stamps) if not _in_range(s)}
    if not bad:
        assert code == grpc.StatusCode.OK, f"{code}: {details}"
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"
        named = re.match(r"events\[\d+\]\.timestamp", details)
        assert named is not None and named.group() in bad, f"names an event with a bad timestamp: {details}"


METHODS = {
    "Recommend": pb.RecommendRequest,
    "SimilarItems": pb.SimilarItemsRequest,
    "RecordEvents": pb.RecordEventsRequest,
    "GetModelInfo": pb.GetModelInfoRequest,
}
garbage_body = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tag, body: bytes([tag]) + body, st.integers(0, 255), st.binary(max_size=60)),
    st.sampled_from([b"\xff", b"\n\x05ab", b"\n\x02\xc3(", b"\x08" + b"\xff" * 11, b"\x12\xff\xff\xff\xff\x0f"]),
)
"""Arbitrary bytes, a field tag then anything, and truncated or malformed messages (a length past
the end, invalid UTF-8 in a string field, an overlong varint)."""


def _decodes(message_type: type, body: bytes) -> bool:
    try:
        message_type.FromString(body)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ
@given(body=garbage_body)
def test_undecodable_bodies_are_invalid_argument(channel: grpc.Channel, method: str, body: bytes) -> None:
    CASES[f"{method} (raw bytes)"] += 1
    call = channel.unary_unary(f"/endcap.v1.RecommendationService/{method}")  # bytes in, bytes out
    code = outcome(call, body, rpc=method)
    if not _decodes(METHODS[method], body):
        assert code == grpc.StatusCode.INVALID_ARGUMENT


GOOD_ROWS = ["u1,i1,2024-01-01", "u1,i2,2024-01-02T10:00:00Z", "u2,i1,1704100000", "u2,i3,2024-01-03"]
cell = st.one_of(
    st.sampled_from(["", " ", "-1", "0", "1.5", "1e309", "NaN", "null", "2024-13-45", "9" * 30, '"', "a,b", "\\"]),
    text,
)


@st.composite
def malformed_csv(draw: st.DrawFn) -> bytes:
    header = draw(
        st.sampled_from(
            [
                "user_id,item_id,timestamp",
                "user_id,item_id,timestamp,quantity",
                "user_id,item_id",
                "user,thing,when",
                "",
            ]
        )
    )
    columns = max(header.count(",") + 1, 1)
    rows = list(draw(st.lists(st.sampled_from(GOOD_ROWS), max_size=6)))
    rows += [",".join(draw(st.lists(cell, min_size=1, max_size=columns + 2))) for _ in range(draw(st.integers(0, 4)))]
    rows = draw(st.permutations(rows))  # duplicates and timestamps out of order
    data = ("\n".join([header, *rows])).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # a truncated last line
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\x00", b"\r"])) + data[position:]
    return data


@FUZZ
@given(data=malformed_csv())
def test_ingest_answers_every_malformed_file_clearly(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    CASES["ingest"] += 1
    path = tmp_path_factory.mktemp("fuzz") / "log.csv"
    path.write_bytes(data)
    for quarantine in (False, True):
        try:
            if quarantine:
                summary = ingest(path, Workspace.resolve(path.parent / "ws"), on_error="quarantine")
                assert summary.rows > 0
                if summary.quarantined:
                    assert len(pd.read_csv(summary.quarantine_file)) == summary.quarantined
            else:
                frame, _ = read_purchase_log(path)
                assert frame["user_id"].str.len().gt(0).all() and (frame["quantity"] >= 1).all()
        except InputFileError as error:
            assert error.line >= 0 and error.column >= 0 and error.reason
            assert str(error).startswith(f"{path}:{error.line}:{error.column}: ")


def test_quarantine_sets_bad_rows_aside_and_ingests_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,item_id,timestamp,quantity\nu1,i1,2024-01-01,1\nu1,,2024-01-02,1\nu2,i2,someday,1\nu2,i3,2024-01-03,-4\nu3,i1,2024-01-04,2\n"
    )
    workspace = tmp_path / "ws"
    assert main(["ingest", str(path), "--on-error", "quarantine", "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "ingested 2 rows" in out and "quarantined 3 bad rows" in out
    quarantined = pd.read_csv(next((workspace / "data" / "quarantine").glob("log-*.csv")))
    assert quarantined[["line", "column"]].values.tolist() == [[3, 2], [4, 3], [5, 4]]
    assert quarantined["reason"].tolist()[0] == "item_id is empty"
    assert main(["ingest", str(path), "--workspace", str(workspace)]) == 2  # the default still refuses the file


def test_quarantine_of_an_instacart_log_keeps_every_valid_line(tmp_path: Path) -> None:
    from endcap.data.ingest import read_purchase_log_quarantining

    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,user_id,order_number,product_id\n"
        "1,u1,1,p1\n2,u1,x,p2\n3,u1,2,p4\n3,u1,2,p5\n4,u2,1,p1\n5,u2,2,p3\n6,u3,1,p9\n"
    )
    frame, chosen, rejected = read_purchase_log_quarantining(path)
    assert chosen == "instacart" and rejected["line"].tolist() == [3]
    kept = sorted(zip(frame["basket_id"], frame["item_id"], strict=True))
    assert kept == [("1", "p1"), ("3", "p4"), ("3", "p5"), ("4", "p1"), ("5", "p3"), ("6", "p9")]


def test_an_order_with_two_owners_is_reported_at_its_own_line_after_a_quarantined_row(tmp_path: Path) -> None:
    from endcap.data.ingest import read_purchase_log_quarantining

    path = tmp_path / "orders.csv"
    path.write_text("order_id,user_id,order_number,product_id\n1,u1,x,p1\n2,u1,1,p2\n3,u2,1,p3\n3,u9,1,p4\n")
    with pytest.raises(InputFileError) as error:
        read_purchase_log_quarantining(path)
    assert (error.value.line, error.value.column) == (4, 1) and "order 3 belongs to more than one user_id" in str(
        error.value
    )
