"""TLS, mutual TLS, bearer tokens and roles, against a real server on a free port."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import free_port, run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from endcap.config import AuthConfig, EndcapConfig, ServingConfig, TlsConfig
from endcap.errors import ConfigError
from endcap.features.store import OnlineFeatures
from endcap.logs import flush_logs
from endcap.plugin_host import PluginHost
from endcap.serving.auth import load_callers
from endcap.serving.client import ClientError, Connection, recommend
from endcap.serving.server import Server
from endcap.serving.service import RecommendationService
from endcap.v1 import recommendation_pb2 as pb
from endcap.v1 import recommendation_pb2_grpc as pb_grpc
from endcap.workspace import Workspace
from grpc_health.v1 import health_pb2, health_pb2_grpc

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
ADMIN = "admin-token-01234567890"


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple | None, server: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    root = tmp_path_factory.mktemp("certs")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("endcap test CA", ca_key, None, server=False)
    files: dict[str, Path] = {"ca": root / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"endcap {who}", key, (ca.subject, ca_key), server=server)
        files[f"{who}_cert"] = root / f"{who}.pem"
        files[f"{who}_key"] = root / f"{who}.key"
        files[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def serve(workspace: Path, tls: TlsConfig | None = None, auth: AuthConfig | None = None) -> Server:
    """A server on a free port. Tokens without TLS are refused at start-up unless allowed: these
    tests call a plaintext port on purpose (tests/test_security_defaults.py checks the refusal)."""
    config = EndcapConfig()
    server = Server(
        "127.0.0.1",
        free_port(),
        ServingConfig(max_workers=4),
        config.limits,
        tls,
        auth,
        allow_insecure_tokens=tls is None and auth is not None,
    )
    ws = Workspace(workspace)
    server.attach(RecommendationService(ws, config, PluginHost(config), OnlineFeatures(ws)))
    return server


@pytest.fixture(scope="module")
def mtls_server(synthetic_workspace: Path, certs: dict[str, Path]) -> Iterator[Server]:
    tls = TlsConfig(cert_file=certs["server_cert"], key_file=certs["server_key"], client_ca_file=certs["ca"])
    server = serve(synthetic_workspace, tls=tls)
    yield server
    server.stop(grace=1)


def test_tls_without_client_certificate(synthetic_workspace: Path, certs: dict[str, Path]) -> None:
    server = serve(synthetic_workspace, tls=TlsConfig(cert_file=certs["server_cert"], key_file=certs["server_key"]))
    try:
        assert len(recommend(Connection(server.address, ca=certs["ca"]), "u1", 3).items) == 3
        with pytest.raises(ClientError, match="UNAVAILABLE"):
            recommend(Connection(server.address), "u1", 3, timeout=3)  # plaintext to a TLS port
        out = run_cli(
            "recommend", "--user-id", "u1", "--k", "3", "--target", server.address, "--tls-ca", str(certs["ca"])
        )
        assert len(out.stdout.strip().splitlines()) == 5
    finally:
        server.stop(grace=1)


def test_mutual_tls_requires_a_client_certificate(mtls_server: Server, certs: dict[str, Path]) -> None:
    with pytest.raises(ClientError, match="UNAVAILABLE"):
        recommend(Connection(mtls_server.address, ca=certs["ca"]), "u1", 3, timeout=3)
    client = Connection(mtls_server.address, ca=certs["ca"], cert=certs["client_cert"], key=certs["client_key"])
    assert len(recommend(client, "u1", 3).items) == 3


@pytest.fixture(scope="module")
def authed(synthetic_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"name": "storefront", "token": READER, "roles": ["recommend"]},
                    {"name": "tracker", "token": WRITER, "roles": ["record"]},
                ]
            }
        )
    )
    import os

    os.environ["ENDCAP_TEST_TOKENS"] = f"ops:{ADMIN}:admin"
    server = serve(synthetic_workspace, auth=AuthConfig(tokens_file=tokens, tokens_env="ENDCAP_TEST_TOKENS"))
    yield server
    server.stop(grace=1)


def call(server: Server, method: str, request: object, token: str | None) -> grpc.StatusCode:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            getattr(stub, method)(request, timeout=5, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


EVENTS = pb.RecordEventsRequest(events=[pb.Event(user_id="u1", item_id="i1", type=pb.EVENT_TYPE_VIEW)])


@pytest.mark.parametrize(
    ("method", "request_", "token", "expected"),
    [
        ("Recommend", pb.RecommendRequest(user_id="u1"), None, grpc.StatusCode.UNAUTHENTICATED),
        ("Recommend", pb.RecommendRequest(user_id="u1"), "not-a-real-token-at-all", grpc.StatusCode.UNAUTHENTICATED),
        ("Recommend", pb.RecommendRequest(user_id="u1"), READER, grpc.StatusCode.OK),
        ("SimilarItems", pb.SimilarItemsRequest(item_id="i1"), READER, grpc.StatusCode.OK),
        ("RecordEvents", EVENTS, READER, grpc.StatusCode.PERMISSION_DENIED),
        ("RecordEvents", EVENTS, WRITER, grpc.StatusCode.OK),
        ("Recommend", pb.RecommendRequest(user_id="u1"), WRITER, grpc.StatusCode.PERMISSION_DENIED),
        ("GetModelInfo", pb.GetModelInfoRequest(), READER, grpc.StatusCode.PERMISSION_DENIED),
        ("GetModelInfo", pb.GetModelInfoRequest(), ADMIN, grpc.StatusCode.OK),
        ("RecordEvents", EVENTS, ADMIN, grpc.StatusCode.OK),
    ],
)
def test_tokens_and_roles(
    authed: Server, method: str, request_: object, token: str | None, expected: grpc.StatusCode
) -> None:
    assert call(authed, method, request_, token) == expected


def test_health_stays_open_and_tokens_are_never_logged(authed: Server, capfd: pytest.CaptureFixture[str]) -> None:
    with grpc.insecure_channel(authed.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    call(authed, "Recommend", pb.RecommendRequest(user_id="u1"), READER)
    call(authed, "Recommend", pb.RecommendRequest(user_id="u1"), "wrong-token-0123456789")
    assert authed.service is not None and authed.service.monitor_feed.flush()  # the request lines are out
    flush_logs()
    logged = capfd.readouterr()
    assert "recommend" in logged.out + logged.err and "user_key" in logged.out + logged.err, "no request line"
    assert READER not in logged.out + logged.err and "wrong-token" not in logged.out + logged.err


def test_permission_denied_names_the_caller_and_the_role(authed: Server) -> None:
    with grpc.insecure_channel(authed.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.RecommendationServiceStub(channel).RecordEvents(
            EVENTS, timeout=5, metadata=[("authorization", f"Bearer {READER}")]
        )
    assert caught.value.details() == "caller 'storefront' lacks the role 'record' needed for RecordEvents"


def test_bad_token_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [{"name": "x", "token": "short", "roles": ["recommend"]}]}))
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_callers(AuthConfig(tokens_file=path))
    path.write_text(yaml.safe_dump({"tokens": [{"name": "x", "token": "long-enough-token-123", "roles": ["root"]}]}))
    with pytest.raises(ConfigError, match="roles must be a non-empty subset of recommend, record, admin"):
        load_callers(AuthConfig(tokens_file=path))
