"""The API's JSON parser: one plain message for any malformed body; duplicate keys refused."""

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as DRFJSONParser


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _unique_keys(pairs: list) -> dict:
    # Which duplicate wins differs between parsers (Python keeps the last one): a body whose
    # meaning depends on that is refused, as upstream answers are.
    payload = dict(pairs)
    if len(payload) != len(pairs):
        raise _DuplicateKeyError
    return payload


class JSONParser(DRFJSONParser):
    """Parses strict JSON; the error never quotes the decoder's message or the body."""

    def parse(self, stream, media_type=None, parser_context=None):
        # DRF hands JSON parsers the body through request.body, which already enforces
        # DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig, a 413 in core.api.exceptions).
        try:
            return json.load(
                stream, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
            )
        except _DuplicateKeyError:
            raise ParseError("Request body names a key twice in one object.") from None
        # RecursionError: a deeply nested body must be a 400, not a 500.
        except (ValueError, RecursionError):
            raise ParseError("Request body is not valid JSON.") from None
