"""API error bodies that never carry exception text or stack traces."""

import logging

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    """Let DRF shape its own errors; turn anything else into a generic 500 body, logged."""
    response = drf_exception_handler(exc, context)
    if response is not None:
        return response
    logger.exception("Unhandled error in %s", context["view"].__class__.__name__)
    return Response(
        {"detail": "Internal server error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR
    )
