"""A corpus of malformed DeployCenter answers and how each must be classified, as data.

Every case is served over real HTTP by the stub (`tests/entitlements/test_malformed_answers.py`)
to a user who already holds accesses. The user's sync-created accesses are on ENTITLED_DOMAINS;
the few answers that are authoritative name exactly those domains in an odd form, so an
unchanged set of accesses also proves the normalisation. Print the table for the docs with

    python -m tests.entitlements.malformed_answers
"""

import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

# The accesses the test user holds before each case: two made by the sync, one by hand.
ENTITLED_DOMAINS = ("alpha.example.org", "beta.example.org")
MANUAL_DOMAIN = "manual.example.org"
# An existing domain that a non-ASCII look-alike of its name must never grant.
LOOKALIKE_DOMAIN = "kelvin.example.org"
# The stub's answers may reach the logs only as a class: this text must never show there.
LOG_SENTINEL = "forged-log-line"
MAX_BODY = "1 MB"

# The classes of core.entitlements.AnswerKind, spelled as its values so that this module is
# plain data (no Django needed to print the table).
AUTHORITATIVE = "authoritative"
NO_INFORMATION = "no_information"
ACCESS_ENDED = "access_ended"
INVALID = "invalid"
BAD_REQUEST = "bad_request"
CONFIGURATION_ERROR = "configuration"
UNAVAILABLE = "unavailable"
# What the sync's bookkeeping records for each class (docs/entitlements.md).
SYNC_STATUS = {
    AUTHORITATIVE: "ok",
    NO_INFORMATION: "no_information",
    ACCESS_ENDED: "access_ended",
    INVALID: "invalid",
    BAD_REQUEST: "error",
    CONFIGURATION_ERROR: "error",
    UNAVAILABLE: "unavailable",
}


@dataclass(frozen=True)
class MalformedAnswer:
    """One upstream answer, raw as it comes off the wire, and the class it must get."""

    id: str
    what: str
    body: bytes
    kind: str
    error_code: str
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # Sent in chunks without a Content-Length: the client must stop reading by itself.
    chunked: bool = False
    # Measured for time and memory by the tests.
    large: bool = False


def answer(entitlements: Any, **top_level: Any) -> bytes:
    """A body shaped like DeployCenter's, with these entitlements."""
    body = {
        "organization": {"id": "o-1", "type": "commune", "name": "Commune", "oidc_valid": None},
        "operator": {"id": "op-1", "name": "Operator", "siret": "", "url": "", "config": {}},
        "entitlements": entitlements,
        **top_level,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def admin_of(domains: Any, **entitlements: Any) -> bytes:
    """A body whose can_admin_maildomains is `domains` (any JSON value)."""
    return answer({"can_access": True, "can_admin_maildomains": domains, **entitlements})


VALID = admin_of(list(ENTITLED_DOMAINS))


def _ten_megabytes() -> bytes:
    """A 10 MB answer: the entitled domains, then the same name repeated."""
    filler = b'"alpha.example.org",' * (10_000_000 // 20)
    return b'{"entitlements": {"can_access": true, "can_admin_maildomains": [' + filler + b'""]}}'


def _million_entries() -> bytes:
    """One million distinct valid domain names (about 20 MB)."""
    names = b",".join(b'"d%d.example.org"' % number for number in range(1_000_000))
    return VALID.replace(b'"beta.example.org"]', b'"beta.example.org", ' + names + b"]")


def _largest_list_under_the_cap() -> bytes:
    """As many distinct short valid names as fit in 1 MB (about 81,500)."""
    names = list(ENTITLED_DOMAINS)
    size = 100
    number = 0
    while size < 990_000:
        name = f"d{number:x}.io"
        names.append(name)
        size += len(name) + 4
        number += 1
    return admin_of(names)


def _gzip_bomb() -> bytes:
    """100 MB of JSON whitespace, gzipped to about 100 kB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    parts = [
        compressor.compress(b'{"entitlements": {"can_access": true, "can_admin_maildomains": [')
    ]
    spaces = b" " * 1_000_000
    parts += [compressor.compress(spaces) for _ in range(100)]
    parts += [compressor.compress(b"]}}"), compressor.flush()]
    return b"".join(parts)


def _nested(depth: int) -> list:
    """A list nested `depth` times, built without recursion."""
    nested: list = ["alpha.example.org"]
    for _ in range(depth):
        nested = [nested]
    return nested


CORPUS: list[MalformedAnswer] = [
    # --- not JSON --------------------------------------------------------------------------
    MalformedAnswer(
        "html-page",
        "an HTML maintenance page with status 200",
        b"<!doctype html><html><body><h1>Maintenance</h1></body></html>",
        INVALID,
        "not_json",
        content_type="text/html; charset=utf-8",
    ),
    MalformedAnswer(
        "html-declared-json",
        "an HTML error page declared as application/json",
        b"<html><body>Internal error</body></html>",
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "truncated-json",
        "JSON cut in the middle of a domain name",
        VALID[: VALID.index(b"beta") + 2],
        INVALID,
        "not_json",
    ),
    MalformedAnswer("empty-body", "an empty body", b"", INVALID, "not_json"),
    MalformedAnswer(
        "whitespace-body", "a body of whitespace only", b" \r\n\t ", INVALID, "not_json"
    ),
    MalformedAnswer(
        "not-utf8",
        "bytes that are not UTF-8 inside a string",
        b'{"entitlements": {"can_access": true, "can_admin_maildomains": ["\xff\xfe.org"]}}',
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "nan-literal",
        "a NaN literal (not JSON)",
        b'{"entitlements": {"can_access": true, "can_admin_maildomains": NaN}}',
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "infinity-in-extra-key",
        "a valid list next to an Infinity literal in an ignored key",
        VALID[:-1] + b', "max_storage": Infinity}',
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "huge-integer",
        "an integer of 5,000 digits (over Python's int parsing limit)",
        b'{"entitlements": {"can_access": true, "max_storage": ' + b"9" * 5000 + b"}}",
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "deep-arrays",
        "100,000 nested arrays (would exhaust a recursive parser)",
        b"[" * 100_000 + b"]" * 100_000,
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "deep-objects",
        "50,000 nested objects",
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        INVALID,
        "not_json",
    ),
    MalformedAnswer(
        "duplicate-list-key",
        "can_admin_maildomains given twice, the last one empty",
        b'{"entitlements": {"can_access": true, "can_admin_maildomains": '
        b'["alpha.example.org", "beta.example.org"], "can_admin_maildomains": []}}',
        INVALID,
        "duplicate_key",
    ),
    MalformedAnswer(
        "duplicate-entitlements-key",
        "the entitlements object given twice",
        b'{"entitlements": {"can_access": false}, '
        b'"entitlements": {"can_access": true, "can_admin_maildomains": []}}',
        INVALID,
        "duplicate_key",
    ),
    # --- JSON that is not an object ----------------------------------------------------------
    MalformedAnswer(
        "top-level-list",
        "a list holding a valid answer",
        b"[" + VALID + b"]",
        INVALID,
        "not_an_object",
    ),
    MalformedAnswer(
        "top-level-string", "a JSON string", b'"alpha.example.org"', INVALID, "not_an_object"
    ),
    MalformedAnswer("top-level-number", "a JSON number", b"42", INVALID, "not_an_object"),
    MalformedAnswer("top-level-null", "JSON null", b"null", INVALID, "not_an_object"),
    MalformedAnswer("top-level-true", "JSON true", b"true", INVALID, "not_an_object"),
    MalformedAnswer(
        "double-encoded",
        "a valid answer encoded twice (a JSON string of JSON)",
        json.dumps(VALID.decode()).encode(),
        INVALID,
        "not_an_object",
    ),
    # --- wrong types at the entitlements level ------------------------------------------------
    MalformedAnswer(
        "entitlements-missing",
        "no entitlements key",
        b'{"organization": null, "operator": null}',
        INVALID,
        "no_entitlements",
    ),
    MalformedAnswer(
        "entitlements-list",
        "entitlements is a list of domains",
        answer(list(ENTITLED_DOMAINS)),
        INVALID,
        "no_entitlements",
    ),
    MalformedAnswer(
        "entitlements-string",
        "entitlements is a string",
        answer("alpha.example.org"),
        INVALID,
        "no_entitlements",
    ),
    MalformedAnswer(
        "entitlements-null", "entitlements is null", answer(None), INVALID, "no_entitlements"
    ),
    MalformedAnswer(
        "entitlements-capitalised",
        "the key spelled Entitlements",
        b'{"Entitlements": {"can_access": true, "can_admin_maildomains": []}}',
        INVALID,
        "no_entitlements",
    ),
    # --- can_access and its reason --------------------------------------------------------------
    MalformedAnswer(
        "can-access-string-no-list",
        'can_access is the string "false", no list',
        answer({"can_access": "false"}),
        NO_INFORMATION,
        "no_information",
    ),
    MalformedAnswer(
        "can-access-string-with-list",
        'can_access is the string "true" next to a valid list (the contract pairs the list '
        "with can_access true only)",
        admin_of(list(ENTITLED_DOMAINS), can_access="true"),
        INVALID,
        "contradictory",
    ),
    MalformedAnswer(
        "can-access-false-with-empty-list",
        "can_access false next to an empty list: must not revoke everything",
        answer({"can_access": False, "can_admin_maildomains": []}),
        INVALID,
        "contradictory",
    ),
    MalformedAnswer(
        "list-key-capitalised",
        "the list key spelled Can_Admin_Maildomains (so absent)",
        answer({"can_access": True, "Can_Admin_Maildomains": []}),
        NO_INFORMATION,
        "no_information",
    ),
    MalformedAnswer(
        "reason-log-injection",
        "a can_access_reason carrying a newline and a forged log line",
        answer({"can_access": False, "can_access_reason": f"x\n[ERROR] {LOG_SENTINEL}"}),
        NO_INFORMATION,
        "no_information",
    ),
    MalformedAnswer(
        "reason-not-activated-odd-extras",
        "not_activated with unknown keys and a potentialOperators object instead of a list "
        "(the ended subscription is read, the extras ignored; nothing revoked at once)",
        answer(
            {"can_access": False, "can_access_reason": "not_activated", "max_storage": None},
            potentialOperators={"unexpected": True},
            metrics=[1, 2],
        ),
        ACCESS_ENDED,
        "not_activated",
    ),
    MalformedAnswer(
        "reason-object",
        "a can_access_reason that is an object",
        answer({"can_access": False, "can_access_reason": {"code": "not_activated"}}),
        NO_INFORMATION,
        "no_information",
    ),
    MalformedAnswer(
        "reason-too-long",
        "a can_access_reason of 10,000 letters",
        answer({"can_access": False, "can_access_reason": "a" * 10_000}),
        NO_INFORMATION,
        "no_information",
    ),
    # --- can_admin_maildomains of the wrong type -------------------------------------------------
    MalformedAnswer(
        "list-a-string",
        "can_admin_maildomains is one domain as a string",
        admin_of("alpha.example.org"),
        INVALID,
        "not_a_list",
    ),
    MalformedAnswer(
        "list-a-dict",
        "can_admin_maildomains is an object",
        admin_of({"alpha.example.org": True}),
        INVALID,
        "not_a_list",
    ),
    MalformedAnswer(
        "list-null", "can_admin_maildomains is null", admin_of(None), INVALID, "not_a_list"
    ),
    MalformedAnswer(
        "list-a-number", "can_admin_maildomains is a number", admin_of(2), INVALID, "not_a_list"
    ),
    MalformedAnswer(
        "list-a-boolean",
        "can_admin_maildomains is false",
        admin_of(False),
        INVALID,
        "not_a_list",
    ),
    MalformedAnswer(
        "list-of-numbers", "a list of numbers", admin_of([1, 2, 3]), INVALID, "not_strings"
    ),
    MalformedAnswer(
        "list-with-null",
        "a list mixing strings and null",
        admin_of([*ENTITLED_DOMAINS, None]),
        INVALID,
        "not_strings",
    ),
    MalformedAnswer(
        "list-of-lists",
        "a list of lists of strings",
        admin_of([list(ENTITLED_DOMAINS)]),
        INVALID,
        "not_strings",
    ),
    MalformedAnswer(
        "list-deeply-nested",
        "a domain nested 500 lists deep inside the list",
        admin_of(_nested(500)),
        INVALID,
        "not_strings",
    ),
    MalformedAnswer(
        "list-of-objects",
        "a list of objects naming domains",
        admin_of([{"name": name} for name in ENTITLED_DOMAINS]),
        INVALID,
        "not_strings",
    ),
    MalformedAnswer(
        "list-of-booleans", "a list of booleans", admin_of([True]), INVALID, "not_strings"
    ),
    # --- names that are not domain names ---------------------------------------------------------
    MalformedAnswer(
        "space-inside",
        "a name with a space inside",
        admin_of(["alpha .example.org", "beta.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "space-around",
        "a name with surrounding spaces",
        admin_of([" alpha.example.org ", "beta.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "empty-name",
        "an empty string among valid names",
        admin_of([*ENTITLED_DOMAINS, ""]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "single-label",
        "a single label (localhost)",
        admin_of([*ENTITLED_DOMAINS, "localhost"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "two-trailing-dots",
        "a name ending with two dots",
        admin_of(["alpha.example.org..", "beta.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "newline-in-label",
        "a newline inside a label (once accepted: `$` matches before a final newline)",
        admin_of([*ENTITLED_DOMAINS, "evil\n.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "nul-in-name",
        "a NUL character inside a name",
        admin_of([*ENTITLED_DOMAINS, "alpha\u0000.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "idn-unicode",
        "an IDN in Unicode, not in its xn-- form",
        admin_of([*ENTITLED_DOMAINS, "bücher.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "rtl-script",
        "a right-to-left (Arabic) name",
        admin_of([*ENTITLED_DOMAINS, "مثال.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "rtl-override",
        "a right-to-left override character reversing a valid name",
        admin_of([*ENTITLED_DOMAINS, "\u202egro.elpmaxe.ahpla"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "zero-width",
        "a zero-width space inside a valid-looking name",
        admin_of(["alpha\u200b.example.org", "beta.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "emoji",
        "an emoji label",
        admin_of([*ENTITLED_DOMAINS, "\U0001f4e7.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "kelvin-sign",
        "a Kelvin sign that str.lower() turns into an ASCII k (once granted kelvin.example.org)",
        admin_of([*ENTITLED_DOMAINS, "\u212aelvin.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "lone-surrogate",
        "a lone UTF-16 surrogate escape",
        admin_of([*ENTITLED_DOMAINS]).replace(b"beta", b"\\ud800beta"),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "label-too-long",
        "a label of 64 characters",
        admin_of([*ENTITLED_DOMAINS, "a" * 64 + ".example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "name-too-long",
        "a name of 254 characters (the limit is 253)",
        admin_of([*ENTITLED_DOMAINS, ("a" * 63 + ".") * 3 + "b" * 58 + ".org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "wildcard",
        "a wildcard name",
        admin_of([*ENTITLED_DOMAINS, "*.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "ip-address",
        "an IP address",
        admin_of([*ENTITLED_DOMAINS, "127.0.0.1"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "email-address",
        "an email address instead of a domain",
        admin_of([*ENTITLED_DOMAINS, "admin@alpha.example.org"]),
        INVALID,
        "invalid_domain",
    ),
    MalformedAnswer(
        "url",
        "a URL instead of a domain",
        admin_of([*ENTITLED_DOMAINS, "https://alpha.example.org/"]),
        INVALID,
        "invalid_domain",
    ),
    # --- odd but readable: normalised, authoritative, accesses unchanged ------------------------
    MalformedAnswer(
        "upper-case",
        "names in upper and mixed case",
        admin_of(["ALPHA.EXAMPLE.ORG", "Beta.Example.Org"]),
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "trailing-dot",
        "fully qualified names with a trailing dot",
        admin_of(["alpha.example.org.", "beta.example.org."]),
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "duplicate-names",
        "the same names repeated in several spellings",
        admin_of(["alpha.example.org", "ALPHA.example.org.", "beta.example.org"] * 3),
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "punycode-idn",
        "an IDN in its xn-- form, not provisioned here",
        admin_of([*ENTITLED_DOMAINS, "xn--bcher-kva.example.org"]),
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "utf8-bom",
        "a UTF-8 byte order mark before a valid body",
        b"\xef\xbb\xbf" + VALID,
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "utf16-body",
        "a valid body encoded in UTF-16 (detected like the standard library does)",
        VALID.decode().encode("utf-16"),
        AUTHORITATIVE,
        "",
    ),
    MalformedAnswer(
        "html-content-type",
        "a valid body declared as text/html",
        VALID,
        AUTHORITATIVE,
        "",
        content_type="text/html",
    ),
    MalformedAnswer(
        "unknown-content-encoding",
        "a valid body with an unknown Content-Encoding (passed through as is)",
        VALID,
        AUTHORITATIVE,
        "",
        headers={"Content-Encoding": "x-unknown"},
    ),
    # --- transport: encodings and lengths ---------------------------------------------------------
    MalformedAnswer(
        "gzip-claimed-not-gzip",
        "Content-Encoding: gzip on a plain body",
        VALID,
        INVALID,
        "not_decodable",
        headers={"Content-Encoding": "gzip"},
    ),
    MalformedAnswer(
        "deflate-claimed-not-deflate",
        "Content-Encoding: deflate on a plain body",
        VALID,
        INVALID,
        "not_decodable",
        headers={"Content-Encoding": "deflate"},
    ),
    MalformedAnswer(
        "gzip-valid",
        "a valid gzipped body",
        gzip.compress(VALID),
        AUTHORITATIVE,
        "",
        headers={"Content-Encoding": "gzip"},
    ),
    MalformedAnswer(
        "gzip-bomb",
        "100 MB of JSON gzipped to ~100 kB",
        _gzip_bomb(),
        INVALID,
        "too_large",
        headers={"Content-Encoding": "gzip"},
        large=True,
    ),
    MalformedAnswer(
        "10mb-declared",
        "a 10 MB body announced by its Content-Length",
        _ten_megabytes(),
        INVALID,
        "too_large",
        large=True,
    ),
    MalformedAnswer(
        "10mb-chunked",
        "a 10 MB body streamed in chunks, no Content-Length",
        _ten_megabytes(),
        INVALID,
        "too_large",
        chunked=True,
        large=True,
    ),
    MalformedAnswer(
        "million-entries",
        "a list of one million domain names (~20 MB), streamed in chunks",
        _million_entries(),
        INVALID,
        "too_large",
        chunked=True,
        large=True,
    ),
    MalformedAnswer(
        "largest-list-under-cap",
        "~81,500 distinct valid names in just under 1 MB (accepted: the cap bounds it)",
        _largest_list_under_the_cap(),
        AUTHORITATIVE,
        "",
        large=True,
    ),
    MalformedAnswer(
        "many-small-objects",
        "333,000 empty objects in just under 1 MB",
        b"[" + b"{}," * 333_000 + b"{}]",
        INVALID,
        "not_an_object",
        large=True,
    ),
    MalformedAnswer(
        "body-shorter-than-declared",
        "the connection closes before the announced Content-Length",
        VALID,
        UNAVAILABLE,
        "connection_error",
        headers={"Content-Length": str(len(VALID) + 1000)},
    ),
    MalformedAnswer(
        "body-longer-than-declared",
        "a Content-Length that cuts the body short",
        VALID,
        INVALID,
        "not_json",
        headers={"Content-Length": "20"},
    ),
    MalformedAnswer(
        "content-length-not-a-number",
        "Content-Length: abc on a valid body (read until the connection closes)",
        VALID,
        AUTHORITATIVE,
        "",
        headers={"Content-Length": "abc"},
    ),
    # --- the status decides, whatever the body says -------------------------------------------
    MalformedAnswer("204-no-content", "no body", b"", INVALID, "http_204", status=204),
    MalformedAnswer(
        "201-with-valid-body",
        "a valid body",
        VALID,
        INVALID,
        "http_201",
        status=201,
    ),
    MalformedAnswer(
        "503-with-valid-body",
        "a valid body",
        VALID,
        UNAVAILABLE,
        "http_503",
        status=503,
    ),
    MalformedAnswer(
        "400-with-valid-body",
        "a valid body",
        VALID,
        BAD_REQUEST,
        "bad_request",
        status=400,
    ),
    MalformedAnswer(
        "401-with-valid-body",
        "a valid body",
        VALID,
        CONFIGURATION_ERROR,
        "http_401",
        status=401,
    ),
    MalformedAnswer(
        "302-redirect",
        "a redirect to another host",
        b"",
        CONFIGURATION_ERROR,
        "http_302",
        status=302,
        headers={"Location": "http://127.0.0.1:9/elsewhere/"},
    ),
]


def markdown_table() -> str:
    """The corpus as the table of docs/reliability.md."""
    lines = [
        "| case | HTTP | answer | class / error code | sync records |",
        "|---|---|---|---|---|",
    ]
    for case in CORPUS:
        code = f" / `{case.error_code}`" if case.error_code else ""
        recorded = SYNC_STATUS[case.kind]
        if case.kind == UNAVAILABLE:
            recorded += ", returned as such (the task retries)"
        lines.append(
            f"| `{case.id}` | {case.status} | {case.what} | {case.kind}{code} | {recorded} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
