"""The API's JSON parser: bounded body size and one plain message for any malformed body."""

import json

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser as DRFJSONParser


class RequestBodyTooLarge(APIException):
    """The body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "request_too_large"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class JSONParser(DRFJSONParser):
    """Parses a JSON body of at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes."""

    def parse(self, stream, media_type=None, parser_context=None):
        # DRF streams the body straight into the parser, bypassing Django's own size check.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(body) > limit:
            raise RequestBodyTooLarge()
        try:
            return json.loads(body, parse_constant=_reject_constant)
        # RecursionError: a deeply nested body must be a 400, not a 500.
        except (ValueError, RecursionError):
            raise ParseError("Request body is not valid JSON.") from None
