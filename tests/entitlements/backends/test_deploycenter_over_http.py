"""The DeployCenter backend against the local stub over real HTTP: every kind of answer, and
the environment's proxy and TLS settings."""

import datetime
import ipaddress
import logging
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.entitlements.backends.base import AnswerKind
from core.entitlements.backends.deploycenter import DeployCenterEntitlementsBackend
from core.models import User
from tests.deploycenter_stub import ALPHA_SIRET, GAMMA_SIRET, DeployCenterStub


@pytest.fixture
def backend(deploycenter_stub):
    return DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters())


def _ask(backend, email="admin@alpha.example.org", siret=ALPHA_SIRET):
    answer = backend.get_entitlements(user=User(email=email), forwarded_claims={"siret": siret})
    return answer.kind, answer.error_code, answer.domains


@pytest.mark.parametrize(
    ("email", "siret", "expected"),
    [
        (
            "admin@ALPHA.example.org",
            ALPHA_SIRET,
            (AnswerKind.AUTHORITATIVE, "", ("alpha.example.org", "beta.example.org")),
        ),
        (
            "scoped@alpha.example.org",
            ALPHA_SIRET,
            (AnswerKind.AUTHORITATIVE, "", ("beta.example.org",)),
        ),
        ("user@alpha.example.org", ALPHA_SIRET, (AnswerKind.AUTHORITATIVE, "", ())),
        (
            "admin@alpha.example.org",
            "00000000099999",
            (AnswerKind.NO_INFORMATION, "no_organization", ()),
        ),
        ("admin@alpha.example.org", GAMMA_SIRET, (AnswerKind.ACCESS_ENDED, "not_activated", ())),
    ],
    ids=["admin", "scoped admin", "member", "unknown siret", "not activated"],
)
def test_answers_per_account(backend, email, siret, expected):
    assert _ask(backend, email, siret) == expected


def test_request_carries_service_auth_and_no_authorization(backend, deploycenter_stub):
    _ask(backend)

    (request,) = deploycenter_stub.requests
    assert request["headers"]["X-Service-Auth"] == f"Bearer {deploycenter_stub.api_key}"
    assert "Authorization" not in request["headers"]
    assert request["query"]["account_email"] == ["admin@alpha.example.org"]


def test_requests_carry_the_headers_a_requests_session_sends(backend, deploycenter_stub):
    _ask(backend)
    _ask(backend)

    for request in deploycenter_stub.requests:
        headers = request["headers"]
        assert headers["User-Agent"].startswith("python-requests/")
        assert headers["Accept"] == "application/json"
        assert "gzip" in headers["Accept-Encoding"]
    assert len(deploycenter_stub.requests) == 2


def test_even_at_debug_level_no_log_carries_the_email_or_the_claim(backend, caplog):
    # The request line (urllib3 logs it at DEBUG) carries both in its query string.
    caplog.set_level(logging.DEBUG)

    assert _ask(backend)[0] is AnswerKind.AUTHORITATIVE

    assert caplog.records, "the backend logs each call"
    assert "admin@alpha" not in caplog.text
    assert "admin%40alpha" not in caplog.text
    assert ALPHA_SIRET not in caplog.text


def test_wrong_key_is_a_configuration_error(deploycenter_stub):
    backend = DeployCenterEntitlementsBackend(
        **deploycenter_stub.backend_parameters(api_key="wrong")
    )

    assert _ask(backend)[:2] == (AnswerKind.CONFIGURATION_ERROR, "http_401")


def test_foreign_service_id_is_a_configuration_error(deploycenter_stub):
    backend = DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters(service_id=4))

    assert _ask(backend)[:2] == (AnswerKind.CONFIGURATION_ERROR, "http_401")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_unavailable(backend, deploycenter_stub, status):
    deploycenter_stub.fail_with(status)

    assert _ask(backend)[:2] == (AnswerKind.UNAVAILABLE, f"http_{status}")


def test_hang_past_the_timeout_is_unavailable(deploycenter_stub):
    backend = DeployCenterEntitlementsBackend(
        **deploycenter_stub.backend_parameters(timeout=[1, 0.3])
    )
    deploycenter_stub.hang(5)

    assert _ask(backend)[:2] == (AnswerKind.UNAVAILABLE, "timeout")


def test_refused_connection_is_unavailable(deploycenter_stub):
    backend = DeployCenterEntitlementsBackend(
        **deploycenter_stub.backend_parameters(base_url="http://127.0.0.1:9/entitlements/")
    )

    assert _ask(backend)[:2] == (AnswerKind.UNAVAILABLE, "connection_error")


@pytest.mark.parametrize(
    ("body", "error_code"),
    [
        (b"<html><body>Bad gateway</body></html>", "not_json"),
        (
            b'{"entitlements": {"can_access": true, "can_admin_maildomains": "alpha.example.org"}}',
            "not_a_list",
        ),
        (b"[" + b'"a.example.org",' * 200_000 + b"]", "too_large"),
    ],
    ids=["html", "string list", "3 MB body"],
)
def test_malformed_bodies_are_invalid(backend, deploycenter_stub, body, error_code):
    deploycenter_stub.answer_raw(body)

    assert _ask(backend)[:2] == (AnswerKind.INVALID, error_code)


def test_pooled_session_serves_concurrent_syncs(deploycenter_stub):
    # What is tested is sharing the pool, not the timeouts: on a machine busy with the whole
    # parallel suite, one of twenty threads can wait its turn past the stub's 2 s.
    backend = DeployCenterEntitlementsBackend(
        **deploycenter_stub.backend_parameters(timeout=[8.0, 8.0])
    )
    deploycenter_stub.latency = 0.05
    results = []

    def ask():
        results.append(_ask(backend))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert (
        results == [(AnswerKind.AUTHORITATIVE, "", ("alpha.example.org", "beta.example.org"))] * 20
    )


def test_successive_syncs_reuse_one_kept_alive_connection(backend, deploycenter_stub):
    # The client reads each answer to its end and gives its connection back to the pool: a
    # run's thousands of calls are not as many TCP (or TLS) handshakes.
    for _ in range(10):
        assert _ask(backend)[0] is AnswerKind.AUTHORITATIVE

    assert deploycenter_stub.calls == 10
    assert deploycenter_stub.connections_opened == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_proxy_environment(monkeypatch):
    """No proxy variable of the test machine's leaks into these tests."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_proxy_of_the_environment_is_read_when_the_backend_is_built(
    deploycenter_stub, no_proxy_environment
):
    # A proxy that refuses connections: a call through it cannot reach the stub.
    no_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    backend = DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters())
    no_proxy_environment.delenv("HTTP_PROXY")

    assert _ask(backend)[:2] == (AnswerKind.UNAVAILABLE, "connection_error")


def test_environment_is_not_read_again_at_each_call(deploycenter_stub, no_proxy_environment):
    backend = DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters())
    # Set after the backend was built (once per worker process): not read any more.
    no_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")

    assert _ask(backend) == (
        AnswerKind.AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    )


def test_proxy_of_the_environment_forwards_the_request(deploycenter_stub, no_proxy_environment):
    # The stub stands in for a plain-HTTP proxy: it gets the whole URL in the request line.
    no_proxy_environment.setenv("HTTP_PROXY", deploycenter_stub.url)
    backend = DeployCenterEntitlementsBackend(
        **deploycenter_stub.backend_parameters(
            base_url="http://deploycenter.invalid/api/v1.0/entitlements/"
        )
    )

    assert _ask(backend)[0] is AnswerKind.AUTHORITATIVE
    (request,) = deploycenter_stub.requests
    assert request["headers"]["Host"] == "deploycenter.invalid"
    assert request["query"]["siret"] == [ALPHA_SIRET]


def test_no_proxy_of_the_environment_is_honoured(deploycenter_stub, no_proxy_environment):
    no_proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    no_proxy_environment.setenv("NO_PROXY", "127.0.0.1")
    backend = DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters())

    assert _ask(backend)[0] is AnswerKind.AUTHORITATIVE


def test_malformed_proxy_is_a_configuration_error(deploycenter_stub, no_proxy_environment):
    no_proxy_environment.setenv("HTTP_PROXY", "http://:8080")
    backend = DeployCenterEntitlementsBackend(**deploycenter_stub.backend_parameters())

    assert _ask(backend)[:2] == (AnswerKind.CONFIGURATION_ERROR, "configuration")


def _self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DeployCenter test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = directory / "cert.pem", directory / "key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certificate_file), str(key_file)


@pytest.fixture
def tls_stub(tmp_path):
    """A stub of its own answering over TLS with a self-signed certificate; its file."""
    certificate_file, key_file = _self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate_file, key_file)
    with DeployCenterStub(latency=0, ssl_context=context) as stub:
        yield stub, certificate_file


def _tls_backend(stub) -> DeployCenterEntitlementsBackend:
    return DeployCenterEntitlementsBackend(**stub.backend_parameters())


def test_ca_bundle_of_the_environment_is_trusted(tls_stub, no_proxy_environment):
    stub, certificate_file = tls_stub
    no_proxy_environment.setenv("REQUESTS_CA_BUNDLE", certificate_file)

    assert _ask(_tls_backend(stub)) == (
        AnswerKind.AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    )
    assert stub.url.startswith("https://")
    assert stub.calls == 1


def test_certificate_outside_the_trusted_bundle_is_a_connection_error(
    tls_stub, no_proxy_environment
):
    stub, _ = tls_stub
    no_proxy_environment.delenv("REQUESTS_CA_BUNDLE", raising=False)
    no_proxy_environment.delenv("CURL_CA_BUNDLE", raising=False)

    assert _ask(_tls_backend(stub))[:2] == (AnswerKind.UNAVAILABLE, "connection_error")
    assert stub.calls == 0


def test_missing_ca_bundle_is_a_configuration_error(tls_stub, no_proxy_environment, tmp_path):
    stub, _ = tls_stub
    no_proxy_environment.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "absent.pem"))

    assert _ask(_tls_backend(stub))[:2] == (AnswerKind.CONFIGURATION_ERROR, "configuration")
