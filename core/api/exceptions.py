"""API error bodies that never carry exception text or stack traces."""

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.services import ServiceError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    """Let DRF shape its own errors, turn a service's refusal into a 400 naming the field, and
    anything else into a generic body, logged."""
    response = drf_exception_handler(exc, context)
    if response is not None:
        return response
    if isinstance(exc, ServiceError):
        return Response({exc.field: [exc.message]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "Request body is too large."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, SuspiciousOperation):
        logger.warning("Suspicious request refused: %s", exc.__class__.__name__)
        return Response({"detail": "Bad request."}, status=status.HTTP_400_BAD_REQUEST)
    logger.exception("Unhandled error in %s", context["view"].__class__.__name__)
    return Response(
        {"detail": "Internal server error."}, status=status.HTTP_500_INTERNAL_SERVER_ERROR
    )
