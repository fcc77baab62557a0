"""Unit tests of the DeployCenter client against the local stub over real HTTP
(tests/deploycenter_stub.py, answers forced case by case): the exact request, and every row of
the classification table."""

import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from core.entitlements.backends.base import AnswerKind
from core.entitlements.backends.deploycenter import MAX_BODY_BYTES, DeployCenterEntitlementsBackend
from core.models import User
from tests.deploycenter_stub import ALPHA_SIRET

SIRET = ALPHA_SIRET
SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "deploycenter-samples.json").read_text())

AUTHORITATIVE = AnswerKind.AUTHORITATIVE
NO_INFORMATION = AnswerKind.NO_INFORMATION
ACCESS_ENDED = AnswerKind.ACCESS_ENDED
INVALID = AnswerKind.INVALID
BAD_REQUEST = AnswerKind.BAD_REQUEST
CONFIGURATION_ERROR = AnswerKind.CONFIGURATION_ERROR
UNAVAILABLE = AnswerKind.UNAVAILABLE


@pytest.fixture
def stub(deploycenter_stub):
    """The stub without its realistic latency: these tests are about answers, not time."""
    deploycenter_stub.latency = 0
    return deploycenter_stub


def _backend(stub, **overrides) -> DeployCenterEntitlementsBackend:
    return DeployCenterEntitlementsBackend(**stub.backend_parameters(**overrides))


def _user(email="Admin@ALPHA.Example.org") -> User:
    return User(email=email)


def _ask(backend, claims=None):
    claims = {"siret": SIRET} if claims is None else claims
    return backend.get_entitlements(user=_user(), forwarded_claims=claims)


def _entitlements_body(**entitlements) -> dict:
    return {"organization": {"id": "x"}, "operator": None, "entitlements": entitlements}


def _answer_json(stub, body, status=200) -> None:
    stub.answer_raw(json.dumps(body).encode(), status=status)


def test_request_is_exactly_what_deploycenter_expects(stub):
    backend = _backend(stub, oidc_claims=["siret", "organization_id", "absent_claim"])

    answer = _ask(backend, {"siret": SIRET, "organization_id": 42})

    # Matched case-sensitively by the stub: an unknown email, whose answer is no rights.
    assert answer.kind is AUTHORITATIVE
    (request,) = stub.requests
    assert (request["method"], request["path"]) == ("GET", "/api/v1.0/entitlements/")
    assert request["query"] == {
        "service_id": ["3"],
        "account_type": ["user"],
        # Local part kept as is, domain part lower-cased.
        "account_email": ["Admin@alpha.example.org"],
        "siret": [SIRET],
        "organization_id": ["42"],
    }
    assert request["headers"]["X-Service-Auth"] == f"Bearer {stub.api_key}"
    assert "Authorization" not in request["headers"]


def test_no_authorization_header_even_with_a_netrc_entry(stub, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    _ask(_backend(stub))

    assert "Authorization" not in stub.requests[0]["headers"]


@pytest.mark.parametrize("claims", [{}, {"siret": ""}, {"siret": "  "}, {"siret": None}], ids=str)
def test_missing_siret_is_not_asked(stub, claims):
    answer = _ask(_backend(stub), claims)

    assert (answer.kind, answer.error_code) == (AnswerKind.NOT_ASKED, "missing_claim")
    assert stub.calls == 0


def test_user_without_email_is_not_asked(stub):
    answer = _backend(stub).get_entitlements(
        user=_user(email=""), forwarded_claims={"siret": SIRET}
    )

    assert (answer.kind, answer.error_code) == (AnswerKind.NOT_ASKED, "missing_email")
    assert stub.calls == 0


# What each recorded live answer means for a sync.
SAMPLE_MEANINGS = {
    "admin (service-level admin link, unscoped)": (
        AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    ),
    "scoped admin (service admin link scope={domains:[beta]})": (
        AUTHORITATIVE,
        "",
        ("beta.example.org",),
    ),
    "non-admin member": (AUTHORITATIVE, "", ()),
    "unknown email": (AUTHORITATIVE, "", ()),
    "missing siret": (BAD_REQUEST, "bad_request", ()),
    "unknown siret (no such organization)": (NO_INFORMATION, "no_organization", ()),
    "known organization without Messages subscription": (ACCESS_ENDED, "not_activated", ()),
    "wrong API key": (CONFIGURATION_ERROR, "http_401", ()),
    "missing account_type": (BAD_REQUEST, "bad_request", ()),
    "neither account_email nor account_id": (BAD_REQUEST, "bad_request", ()),
    "invalid email syntax": (BAD_REQUEST, "bad_request", ()),
}


def test_every_sample_has_a_meaning():
    assert {sample["case"] for sample in SAMPLES} == set(SAMPLE_MEANINGS)


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample["case"] for sample in SAMPLES])
def test_recorded_answers_are_classified(stub, sample):
    _answer_json(stub, sample["body"], status=sample["status"])

    answer = _ask(_backend(stub))

    assert (answer.kind, answer.error_code, answer.domains) == SAMPLE_MEANINGS[sample["case"]]


BODY_CASES = [
    # (case id, body, kind, error_code, domains)
    (
        "normalised",
        _entitlements_body(
            can_access=True, can_admin_maildomains=["Beta.Example.org.", "alpha.example.org"]
        ),
        AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    ),
    (
        "duplicates",
        _entitlements_body(
            can_access=True, can_admin_maildomains=["alpha.example.org", "ALPHA.example.org"]
        ),
        AUTHORITATIVE,
        "",
        ("alpha.example.org",),
    ),
    (
        "extra keys ignored",
        {
            **_entitlements_body(
                can_access=True,
                can_store=True,
                max_storage=10,
                can_admin_maildomains=["alpha.example.org"],
            ),
            "metrics": {"x": 1},
            "potentialOperators": [],
        },
        AUTHORITATIVE,
        "",
        ("alpha.example.org",),
    ),
    (
        "key absent, can_access false",
        _entitlements_body(can_access=False, can_access_reason="not_activated"),
        ACCESS_ENDED,
        "not_activated",
        (),
    ),
    (
        "key absent, no reason",
        _entitlements_body(can_access=False),
        NO_INFORMATION,
        "no_information",
        (),
    ),
    (
        "key absent, reason is prose",
        _entitlements_body(can_access=False, can_access_reason="Organisation inconnue !"),
        NO_INFORMATION,
        "no_information",
        (),
    ),
    (
        "list holding a non-string",
        _entitlements_body(can_access=True, can_admin_maildomains=["alpha.example.org", 3]),
        INVALID,
        "not_strings",
        (),
    ),
    (
        "string instead of a list",
        _entitlements_body(can_access=True, can_admin_maildomains="alpha.example.org"),
        INVALID,
        "not_a_list",
        (),
    ),
    (
        "null list",
        _entitlements_body(can_access=True, can_admin_maildomains=None),
        INVALID,
        "not_a_list",
        (),
    ),
    (
        "domain with a space",
        _entitlements_body(can_access=True, can_admin_maildomains=["alpha example.org"]),
        INVALID,
        "invalid_domain",
        (),
    ),
    (
        "unicode domain",
        _entitlements_body(can_access=True, can_admin_maildomains=["mairie-élan.fr"]),
        INVALID,
        "invalid_domain",
        (),
    ),
    ("not an object", ["alpha.example.org"], INVALID, "not_an_object", ()),
    ("no entitlements", {"organization": None}, INVALID, "no_entitlements", ()),
    ("entitlements not an object", {"entitlements": []}, INVALID, "no_entitlements", ()),
]


@pytest.mark.parametrize(
    ("body", "kind", "error_code", "domains"),
    [case[1:] for case in BODY_CASES],
    ids=[case[0] for case in BODY_CASES],
)
def test_json_bodies_are_classified(stub, body, kind, error_code, domains):
    _answer_json(stub, body)

    answer = _ask(_backend(stub))

    assert (answer.kind, answer.error_code, answer.domains) == (kind, error_code, domains)


@pytest.mark.parametrize(
    ("body", "error_code"),
    [
        (b"<!doctype html><html><body>Maintenance</body></html>", "not_json"),
        (b'{"entitlements": {"can_access": tr', "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b"", "not_json"),
        (b"x" * (MAX_BODY_BYTES + 1), "too_large"),
        (b'{"entitlements": {"can_access": true, "can_admin_maildomains": NaN}}', "not_json"),
        (
            b'{"entitlements": {"can_admin_maildomains": ["alpha.example.org"], '
            b'"can_admin_maildomains": []}}',
            "duplicate_key",
        ),
    ],
    ids=["html", "truncated", "binary", "deeply nested", "empty", "over 1 MB", "nan", "dup key"],
)
def test_raw_bodies_are_classified(stub, body, error_code):
    stub.answer_raw(body, content_type="text/html")

    answer = _ask(_backend(stub))

    assert (answer.kind, answer.error_code) == (INVALID, error_code)


@pytest.mark.parametrize(
    ("status", "kind", "error_code"),
    [
        (301, CONFIGURATION_ERROR, "http_301"),
        (302, CONFIGURATION_ERROR, "http_302"),
        (400, BAD_REQUEST, "bad_request"),
        (401, CONFIGURATION_ERROR, "http_401"),
        (403, CONFIGURATION_ERROR, "http_403"),
        (404, CONFIGURATION_ERROR, "http_404"),
        (405, CONFIGURATION_ERROR, "http_405"),
        (408, UNAVAILABLE, "http_408"),
        (429, UNAVAILABLE, "http_429"),
        (500, UNAVAILABLE, "http_500"),
        (502, UNAVAILABLE, "http_502"),
        (503, UNAVAILABLE, "http_503"),
        (504, UNAVAILABLE, "http_504"),
        (204, INVALID, "http_204"),
    ],
    ids=str,
)
def test_statuses_are_classified(stub, status, kind, error_code):
    headers = {"Location": stub.url + "elsewhere/"} if 300 <= status < 400 else {}
    stub.answer_raw(b'{"detail": "..."}', status=status, headers=headers)

    answer = _ask(_backend(stub))

    assert (answer.kind, answer.error_code) == (kind, error_code)
    # Redirects are reported, never followed.
    assert stub.calls == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def full_backlog():
    """A port whose listening socket takes no more connections: a connect there times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        waiting = []
        # The kernel queues a connection or two beyond the backlog; those after are dropped.
        for _ in range(4):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            waiting.append(client)
        time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/api/v1.0/entitlements/"
        for client in waiting:
            client.close()


class _SlowServer:
    """Answers one request with a 200 whose body comes `pieces` at a time, `pause` apart, then
    stays silent: a body that stalls, or that drips past the client's deadline."""

    def __init__(self, *, pieces: list[bytes], pause: float, declared: int):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._pieces, self._pause, self._declared = pieces, pause, declared
        self._done = threading.Event()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/api/v1.0/entitlements/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % self._declared
            )
            for piece in self._pieces:
                connection.sendall(piece)
                if self._done.wait(self._pause):
                    return
            self._done.wait(10)

    def close(self) -> None:
        self._done.set()
        self._listener.close()


@pytest.fixture
def slow_server():
    servers = []

    def start(**kwargs) -> str:
        servers.append(_SlowServer(**kwargs))
        return servers[-1].url

    yield start
    for server in servers:
        server.close()


def test_hang_before_the_answer_is_a_timeout(stub):
    stub.hang(5)

    answer = _ask(_backend(stub, timeout=[1, 0.2]))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "timeout")


def test_connect_past_its_timeout_is_a_timeout(stub, full_backlog):
    started = time.monotonic()

    answer = _ask(_backend(stub, base_url=full_backlog, timeout=[0.2, 1]))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "timeout")
    assert time.monotonic() - started < 2


def test_refused_connection_is_a_connection_error(stub):
    base_url = f"http://127.0.0.1:{_closed_port()}/api/v1.0/entitlements/"

    answer = _ask(_backend(stub, base_url=base_url))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "connection_error")


def test_truncated_transfer_is_a_connection_error(stub):
    body = json.dumps(_entitlements_body(can_access=True, can_admin_maildomains=[])).encode()
    stub.answer_raw(body, headers={"Content-Length": str(len(body) + 100)})

    answer = _ask(_backend(stub))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "connection_error")


def test_body_stalling_past_the_read_timeout_is_a_timeout(stub, slow_server):
    base_url = slow_server(pieces=[b'{"entitlements": '], pause=5, declared=100)

    answer = _ask(_backend(stub, base_url=base_url, timeout=[1, 0.3]))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "timeout")


def test_body_dripping_past_the_whole_timeout_is_a_timeout(stub, slow_server):
    # Each 64 kB read within the read timeout; the whole body (under 1 MB), 3.5 s, not within
    # connect + read.
    piece = b" " * 65536
    base_url = slow_server(pieces=[piece] * 15, pause=0.25, declared=len(piece) * 15)
    started = time.monotonic()

    answer = _ask(_backend(stub, base_url=base_url, timeout=[0.3, 0.5]))

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, "timeout")
    assert time.monotonic() - started < 3


def test_logs_carry_no_email_claim_or_key(stub, caplog):
    user = _user()

    with caplog.at_level(logging.DEBUG):
        _backend(stub).get_entitlements(user=user, forwarded_claims={"siret": SIRET})

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert str(user.pk) in text
    for secret in ("alpha.example.org", "Admin@", SIRET, stub.api_key):
        assert secret.lower() not in text.lower()


def test_authoritative_answers_log_at_debug_failures_at_info(stub, caplog):
    backend = _backend(stub)

    with caplog.at_level(logging.DEBUG, logger="core.entitlements.backends.deploycenter"):
        _ask(backend)
        stub.fail_with(503)
        _ask(backend)

    assert [record.levelno for record in caplog.records] == [logging.DEBUG, logging.INFO]


BASE_URL = "https://deploycenter.test/api/v1.0/entitlements/"
API_KEY = "s3cret-service-key"


def _parameters_only(**overrides) -> DeployCenterEntitlementsBackend:
    """A backend built, never asked: no server needed."""
    return DeployCenterEntitlementsBackend(
        **{"base_url": BASE_URL, "service_id": 3, "api_key": API_KEY, **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": BASE_URL.rstrip("/")}, "end with '/'"),
        ({"base_url": "deploycenter.test/api/"}, "http(s) URL"),
        ({"service_id": "three"}, "positive integer"),
        ({"service_id": 0}, "positive integer"),
        ({"api_key": ""}, "non-empty"),
        ({"api_key": "two words"}, "spaces"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": [1, 2, 3]}, "timeout"),
        ({"oidc_claims": ["organization_id"]}, "'siret'"),
        ({"oidc_claims": ["siret", "account_email"]}, "query parameters"),
        ({"oidc_claims": "siret"}, "list of claim names"),
    ],
    ids=str,
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        _parameters_only(**overrides)

    assert API_KEY not in str(raised.value)


def test_parameters_are_normalised():
    backend = _parameters_only(service_id="0003", timeout=7, oidc_claims=["siret", "siret", "x"])

    assert backend.service_id == "3"
    assert backend.timeout == (7.0, 7.0)
    assert backend.forwarded_claim_names == ["siret", "x"]
