"""core/api/parsers.py: strict JSON, one plain message for any malformed body."""

import io

import pytest
from rest_framework.exceptions import ParseError

from core.api.parsers import JSONParser


def test_malformed_json_is_a_400_without_the_decoder_message(user_client, user):
    user.is_staff = True
    user.save()

    response = user_client.generic(
        "POST", "/api/v1.0/admin/maildomains/", '{"name": ', content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {"detail": "Request body is not valid JSON."}


def _parse(body: bytes):
    return JSONParser().parse(io.BytesIO(body))


def test_a_valid_body_is_parsed_as_json():
    assert _parse(b'{"domains": ["a.example.org"], "n": 1.5}') == {
        "domains": ["a.example.org"],
        "n": 1.5,
    }


@pytest.mark.parametrize(
    "body",
    [b'{"n": NaN}', b'{"n": Infinity}', b'{"n": -Infinity}', b"[" * 100_000 + b"]" * 100_000],
    ids=["nan", "infinity", "minus-infinity", "deeply-nested"],
)
def test_what_strict_json_refuses_is_one_plain_parse_error(body):
    with pytest.raises(ParseError) as refused:
        _parse(body)

    assert str(refused.value.detail) == "Request body is not valid JSON."


@pytest.mark.parametrize(
    "body", [b'{"a": 1, "a": 2}', b'{"x": [{"a": 1, "b": 2, "a": 1}]}'], ids=["top", "nested"]
)
def test_a_key_named_twice_in_one_object_is_refused(body):
    with pytest.raises(ParseError) as refused:
        _parse(body)

    assert str(refused.value.detail) == "Request body names a key twice in one object."


def test_the_same_key_in_two_objects_is_no_duplicate():
    assert _parse(b'[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
